"""Compose a plan from the conf tree and Hydra overrides (Hydra's compose API, torch-free).

One convenience on top of Hydra: `quant.mapping.<part>=<option>` works whether or not the part is
already in the mapping, and replaces (not merges into) what a preset put there, so that
`preset=flux-nf4 quant.mapping.transformer=int8wo` leaves no stale bitsandbytes kwargs behind."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qconf.errors import PlanError, Problem
from qconf.paths import backend_options, conf_dir

CONFIG_NAME = "qconf"
_MAPPING_PREFIX = "quant.mapping."
# Open dicts: a new key there is normal use, not a typo, so no `+` is needed.
_OPEN_PREFIXES = (_MAPPING_PREFIX, "quant.kwargs.")


def compose(
    overrides: Sequence[str] = (),
    *,
    config_dir: str | Path | None = None,
    config_name: str = CONFIG_NAME,
) -> Any:
    """The composed plan as a DictConfig. `config_dir` adds a user conf tree (searched first)."""
    import yaml
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    extra_dirs = _user_dirs(config_dir)
    rewritten = rewrite_overrides(list(overrides), extra_dirs)
    if extra_dirs:
        rewritten.insert(
            0, f"hydra.searchpath=[{','.join('file://' + str(d) for d in extra_dirs)}]"
        )
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=rewritten)
    except OverrideParseException as exc:
        raise PlanError(_parse_problem(overrides, exc)) from None
    except MissingConfigException as exc:
        raise PlanError(_missing_option_problem(str(exc))) from None
    except yaml.YAMLError as exc:
        raise PlanError(_yaml_problem(exc)) from None
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        # ValueError: Hydra's own for some bad values, e.g. `model=null`
        raise PlanError(_composition_problem(overrides, exc)) from None
    OmegaConf.set_struct(cfg, False)
    return cfg


def _user_dirs(config_dir: str | Path | None) -> tuple[Path, ...]:
    if config_dir is None:
        return ()
    path = Path(config_dir).expanduser().resolve()
    if not path.is_dir():
        raise PlanError(Problem("--config-dir", f"'{config_dir}' is not a folder", "pass a folder"))
    return (path,)


def rewrite_overrides(overrides: list[str], extra_dirs: tuple[Path, ...] = ()) -> list[str]:
    """Turn `quant.mapping.<part>[...]=v` into overrides that work on any mapping state."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    options = backend_options(extra_dirs)
    result = []
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except HydraException as exc:  # the parser raises it for syntax errors
            raise PlanError(_parse_problem([text], exc)) from None
        key = override.key_or_group
        if override.package is not None or not key.startswith(_OPEN_PREFIXES):
            result.append(text)
            continue
        if override.is_delete():
            result.append(text)
            continue
        if not key.startswith(_MAPPING_PREFIX):
            result.append(f"++{key}={text.split('=', 1)[1]}")
            continue
        value = override.value()
        is_part = "." not in key[len(_MAPPING_PREFIX) :]
        if is_part and isinstance(value, str) and value in options:
            # null first: a dict assigned over a dict would merge with the preset's kwargs.
            result += [f"++{key}=null", f"++{key}={_override_value(options[value])}"]
        elif is_part and isinstance(value, dict):
            result += [f"++{key}=null", f"++{key}={_override_value(value)}"]
        else:
            result.append(f"++{key}={text.split('=', 1)[1]}")
    return result


def _override_value(value: Any) -> str:
    """A primitive YAML value in Hydra's override grammar."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _parse_problem(overrides: Sequence[str], exc: BaseException) -> Problem:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    culprit = overrides[0] if len(overrides) == 1 else "?"
    for text in overrides:
        try:
            parser.parse_override(text)
        except Exception:
            culprit = text
            break
    return Problem(
        f"override '{culprit}'",
        f"bad override syntax ({_first_line(exc)})",
        "write key=value, +key=value, ~key or group=option; quote values with spaces",
    )


def _missing_option_problem(message: str) -> Problem:
    found = re.search(r"Could not find '([^']+)/([^'/]+)'", message)
    available = re.findall(r"^\t(\S+)$", message, flags=re.M)
    if not found:
        return Problem(
            "config", _first_line(Exception(message)), "check --config-name/--config-dir"
        )
    group, option = found.groups()
    hint = difflib.get_close_matches(option, available, n=1)
    did_you_mean = f"did you mean '{hint[0]}'? " if hint else ""
    return Problem(
        f"override '{group}={option}'",
        f"unknown {group} '{option}'",
        f"{did_you_mean}available: {', '.join(available)} (qconf list {group}s)",
    )


def _yaml_problem(exc: Any) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    where = f"{mark.name}:{mark.line + 1}" if mark else "config file"
    return Problem(where, f"malformed YAML: {getattr(exc, 'problem', None) or exc}", "fix the file")


def _composition_problem(overrides: Sequence[str], exc: BaseException) -> Problem:
    message = str(exc)
    found = re.search(
        r"Could not (?:override|delete from config|append to config)\W+'?([\w.\[\]-]+)", message
    )
    if found:
        key = found.group(1)
        culprit = next((o for o in overrides if key in o), key)
        return Problem(
            f"override '{culprit}'",
            f"no key '{key}' in the plan",
            "check the spelling (`qconf show` prints every key); prefix + to add a new key",
        )
    return Problem("config", _first_line(exc), "check the overrides and config files")
