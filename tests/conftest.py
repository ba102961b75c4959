"""Test session set-up: offline, and tiny pipelines cached in a fresh folder per session."""

from __future__ import annotations

import atexit
import os
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
    """Tests import backend libraries themselves (pytest.importorskip): with qconf's settings.
    Set here, before any test module is collected, not at this file's import: mutmut's check
    that a failing qconf function fails the tests must see a failed session, not a conftest
    that cannot be imported (pytest's usage error, which mutmut refuses)."""
    set_library_environment()


@pytest.fixture(scope="module")
def qconf_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private cache for a module's tiny pipelines (built on first use, < 1 s each)."""
    path = tmp_path_factory.mktemp("qconf-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QCONF_CACHE", str(path))
        yield path
