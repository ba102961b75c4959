"""Locate the conf tree: qconf/conf inside a wheel, conf/ at the repo root in a checkout."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path

import yaml

from qconf.errors import PlanError, Problem
from qconf.trust.yamlsafe import load_yaml_file


@cache
def conf_dir() -> Path:
    here = Path(__file__).resolve().parents[1]  # the qconf package
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


def backend_options(extra_dirs: tuple[Path, ...] = ()) -> Mapping[str, dict]:
    """Named backend settings (conf/backend/<option>.yaml): option -> {backend, kwargs}.
    Each file is read when its option is first used, so one bad file in a user's tree only
    matters to the plans that name it."""
    return _options(tuple(group_options("backend", extra_dirs).items()))


@cache
def _options(files: tuple[tuple[str, Path], ...]) -> BackendOptions:
    return BackendOptions(dict(files))


class BackendOptions(Mapping[str, dict]):
    def __init__(self, files: dict[str, Path]) -> None:
        self._files = files
        self._read: dict[str, dict] = {}

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def __contains__(self, name: object) -> bool:
        return name in self._files

    def __getitem__(self, name: str) -> dict:
        if name not in self._read:
            self._read[name] = _read_option(self._files[name])
        return self._read[name]


def _read_option(path: Path) -> dict:
    try:
        data = load_yaml_file(path)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        what = getattr(exc, "problem", None) or exc.__class__.__name__
        raise PlanError(
            Problem(f"{path}{line}", f"malformed YAML ({what})", "fix the file")
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PlanError(
            Problem(str(path), f"a backend option is a mapping, found {type(data).__name__}",
                    "write backend: ... and kwargs: ...")
        )  # fmt: skip
    return data
