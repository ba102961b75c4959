"""Test session set-up: offline, and tiny pipelines cached in a fresh folder per session."""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from qconf.backends import set_library_environment

os.environ["HF_HUB_OFFLINE"] = "1"
if "QCONF_CACHE" not in os.environ:
    os.environ["QCONF_CACHE"] = tempfile.mkdtemp(prefix="qconf-test-cache-")
    atexit.register(shutil.rmtree, os.environ["QCONF_CACHE"], ignore_errors=True)
# A private, empty Hugging Face hub cache: tests neither read nor write the user's, and a hub id
# resolves only to what a test puts there. Set before huggingface_hub is imported (it reads the
# variable once, at import).
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="qconf-test-hub-")
atexit.register(shutil.rmtree, os.environ["HF_HUB_CACHE"], ignore_errors=True)
warnings.filterwarnings("ignore", category=FutureWarning)


def pytest_configure(config: pytest.Config) -> None:
    # Tests import backend libraries themselves (pytest.importorskip, at collection, which
    # comes after this hook): with qconf's settings. A hook, not a call at import: mutmut's
    # check that a failing qconf function fails the tests raises from every qconf function, and
    # raised while conftest imports that is pytest's usage error, which stops `make mutate`.
    set_library_environment()


# `make mutate`: a mutant of the plan core (compose, schema, checks, trust, saving ...) is pinned
# by the core's own files. These pin the estimator, the backends and the report; they compose
# whole preset trees and load pipelines, so they reach every core function too, and under a core
# mutant a preset tree is re-estimated for up to a minute to say what the core's files say in ms.
_CORE_MUTANT = re.compile(r"qconf\.(plan|loading\.saving)\.")
_NOT_FOR_CORE_MUTANTS = frozenset(
    f"tests/{name}.py"
    for name in (
        "test_preset_units",
        "test_preset_cache_units",
        "test_estimate_sources",
        "test_estimate_units",
        "test_report_exact",
    )
)


@functools.cache
def _mutmut_durations() -> dict[str, float]:
    """Seconds each test took in mutmut's clean run (its stats file, in mutmut's working folder)."""
    stats = Path("mutmut-stats.json")
    return json.loads(stats.read_text())["duration_by_test"] if stats.is_file() else {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `make mutate`, a mutant's tests (run with -x) fastest file first, fastest test
    first within it, so a killed mutant usually stops after milliseconds; a file's tests stay
    together so its module fixtures are built once."""
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if "__mutmut_" not in mutant:
        return
    if _CORE_MUTANT.match(mutant):
        kept = [item for item in items if _file(item) not in _NOT_FOR_CORE_MUTANTS]
        if kept:  # none left: the estimator's files are all that reach it, so they run
            config.hook.pytest_deselected(
                items=[i for i in items if _file(i) in _NOT_FOR_CORE_MUTANTS]
            )
            items[:] = kept
    durations = _mutmut_durations()
    by_file: dict[str, list[float]] = {}
    for item in items:
        by_file.setdefault(_file(item), []).append(durations.get(item.nodeid, 0.0))
    mean = {name: sum(times) / len(times) for name, times in by_file.items()}
    items.sort(key=lambda item: (mean[_file(item)], durations.get(item.nodeid, 0.0)))


def _file(item: pytest.Item) -> str:
    return item.nodeid.split("::")[0]


@pytest.fixture(scope="module")
def qconf_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private cache for a module's tiny pipelines (built on first use, < 1 s each)."""
    path = tmp_path_factory.mktemp("qconf-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QCONF_CACHE", str(path))
        yield path
