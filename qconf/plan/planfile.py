"""Plans as files: `--plan FILE` reads what `qconf show --yaml` and `qconf inspect` print.

A plan file is `{model: {...}, quant: {...}, run: {...}}` (each optional). It is untrusted like
any config file: read with bounded work, checked for shape, and turned into overrides that go
*before* the command line's, so `--plan f.yaml quant.mapping.vae=int8wo` changes one part."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from qconf.errors import PlanError, Problem
from qconf.trust.userpath import user_path
from qconf.trust.yamlsafe import load_yaml_file

SECTIONS = ("model", "quant", "run")
_WHOLE = ("mapping", "kwargs")  # replaced as a whole, like `quant.mapping={...}`
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def user_file(text: str | Path, where: str) -> Path:
    """A file path the user gave: `~` expanded, and it must be a readable file."""
    path = user_path(text, where)
    if not path.is_file():
        raise PlanError(Problem(where, f"'{text}' is not a file", "give the path of a plan file"))
    return path


def plan_file_overrides(text: str | Path) -> list[str]:
    """The overrides that rebuild the plan in file `text` on top of qconf's defaults."""
    import yaml

    path = user_file(text, "--plan")
    try:
        data = load_yaml_file(path)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{text}:{mark.line + 1}" if mark else str(text)
        what = getattr(exc, "problem", None) or type(exc).__name__
        raise PlanError(Problem(where, f"malformed YAML ({what})", "fix the file")) from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise PlanError(
            Problem(str(text), f"a plan file is a mapping, found {type(data).__name__}",
                    "write model:, quant: and run: sections (qconf show --yaml prints one)")
        )  # fmt: skip
    problems = [
        Problem(f"{text}: {key!r}", "not a plan section", f"use {', '.join(SECTIONS)}")
        for key in data
        if key not in SECTIONS
    ]
    overrides = []
    for section in SECTIONS:
        body = data.get(section)
        if body is None:
            continue
        if not isinstance(body, dict):
            problems.append(Problem(f"{text}: {section}", "must be a mapping", "fix the file"))
            continue
        for key, value in body.items():
            if not (isinstance(key, str) and _NAME.match(key)):
                problems.append(Problem(f"{text}: {section}.{key!r}", "not a key name", ""))
            elif section == "quant" and key in _WHOLE:
                overrides.append(f"quant.{key}={override_value(value)}")
            else:
                overrides.append(f"++{section}.{key}={override_value(value)}")
    bad_keys = list(_bad_keys(data, str(text)))
    if problems or bad_keys:
        raise PlanError(problems + bad_keys)
    return overrides


def _bad_keys(value: Any, where: str, depth: int = 0) -> Any:
    if isinstance(value, dict):
        for key, sub in value.items():
            if not (isinstance(key, str) and _NAME.match(key)):
                yield Problem(f"{where}: {key!r}", "not a key name", "use letters, digits and _")
            else:
                yield from _bad_keys(sub, f"{where}.{key}" if depth else f"{where}: {key}",
                                     depth + 1)  # fmt: skip
    elif isinstance(value, list):
        for item in value:
            yield from _bad_keys(item, where, depth + 1)


def override_value(value: Any) -> str:
    """A primitive YAML value in Hydra's override grammar."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def plan_file_data(plan: Any) -> dict[str, Any]:
    """A validated Plan in the plan-file format (`qconf show --yaml`); round-trips via --plan."""
    quant = plan.quant
    if quant.mode == "granular":
        quant_data: dict[str, Any] = {
            "mapping": {
                part: None if entry is None else entry.model_dump(mode="json", exclude_none=True)
                for part, entry in quant.mapping.items()
            }
        }
    else:
        quant_data = {"backend": quant.backend, "kwargs": quant.kwargs,
                      "components": quant.components}  # fmt: skip
    data = {"model": plan.model.model_dump(mode="json"), "quant": quant_data}
    if getattr(plan, "run", None) is not None:
        data["run"] = plan.run.model_dump(mode="json")
    return data
