"""Locate the conf tree: qconf/conf inside a wheel, conf/ at the repo root in a checkout."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

from qconf.errors import PlanError, Problem
from qconf.yamlsafe import load_yaml_file


@cache
def conf_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "qconf.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"qconf's conf tree is missing (looked in {here / 'conf'})")


def group_options(group: str, extra_dirs: tuple[Path, ...] = ()) -> dict[str, Path]:
    """Option name -> YAML file of a config group, built-in first, user dirs overriding."""
    options: dict[str, Path] = {}
    for root in (conf_dir(), *extra_dirs):
        for path in sorted((Path(root) / group).glob("*.yaml")):
            options[path.stem] = path
    return options


def backend_options(extra_dirs: tuple[Path, ...] = ()) -> dict[str, dict]:
    """Named backend settings (conf/backend/<option>.yaml): option -> {backend, kwargs}."""
    return _load_options(tuple(group_options("backend", extra_dirs).items()))


@cache
def _load_options(files: tuple[tuple[str, Path], ...]) -> dict[str, dict]:
    options = {}
    for name, path in files:
        try:
            options[name] = load_yaml_file(path) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            what = getattr(exc, "problem", None) or exc.__class__.__name__
            raise PlanError(
                Problem(f"{path}{line}", f"malformed YAML ({what})", "fix the file")
            ) from None
    return options
