"""Compose a plan from the conf tree and Hydra overrides (Hydra's compose API, torch-free).

One convenience on top of Hydra: `quant.mapping.<part>=<option>` works whether or not the part is
already in the mapping, and replaces (not merges into) what a preset put there, so that
`preset=flux-nf4 quant.mapping.transformer=int8wo` leaves no stale bitsandbytes kwargs behind."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from qconf.errors import PlanError, Problem
from qconf.plan.conftree import backend_options, conf_dir
from qconf.plan.hydra_node import hydra_node_problems, is_hydra_override, plugin_choices
from qconf.plan.planfile import override_value, plan_file_overrides
from qconf.plan.trust import COMPOSED_FLAG, flag_values, trust_problems, typed_trust_flags
from qconf.trust.bounds import check_override_depth
from qconf.trust.userpath import user_path
from qconf.trust.yamlsafe import bounded_omegaconf

CONFIG_NAME = "qconf"
_MAPPING_PREFIX = "quant.mapping."
# Open dicts: a new key there is normal use, not a typo, so no `+` is needed.
_OPEN_PREFIXES = (_MAPPING_PREFIX, "quant.kwargs.")
_WHOLE_DICTS = ("quant.mapping", "quant.kwargs")
_LISTS = {"backend": "options", "preset": "presets", "model": "models"}  # group -> qconf list


def compose(
    overrides: Sequence[str] = (),
    *,
    config_dir: str | Path | None = None,
    config_name: str = CONFIG_NAME,
    plan_file: str | Path | None = None,
) -> Any:
    """The composed plan as a DictConfig (without the `hydra:` node). `config_dir` adds a user
    conf tree, searched before qconf's; `plan_file` is a plan in `qconf show --yaml` form,
    applied before `overrides`. Config files are read with bounded work, and any `hydra:`
    setting that came from a file rather than the command line is refused."""
    from omegaconf import OmegaConf

    check_override_sizes(overrides)
    check_override_depth(overrides)
    user_dirs = user_config_dirs(config_dir)
    typed = list(overrides)
    if plan_file is not None:
        from_file = plan_file_overrides(plan_file)
        check_override_sizes(from_file)  # a file's aliases can expand into huge overrides
        overrides = [*from_file, *overrides]
    rewritten = rewrite_overrides(list(overrides), user_dirs)
    cfg = _compose(user_dirs, config_name, [*rewritten, *SEARCH_OVERRIDES], overrides)
    # Only a user's tree can hold a file qconf does not trust; with none, every file composed is
    # qconf's own (or an installed Hydra plugin's), so the hydra node needs no second compose.
    problems = _hydra_problems(cfg, rewritten, overrides) if user_dirs else []
    if problems:
        raise PlanError(problems)
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra")
    # After the hydra node is gone: the flags are judged as validation will read them.
    problems = _trust_problems(cfg, typed)
    if problems:
        raise PlanError(problems)
    cfg._set_flag(COMPOSED_FLAG, True)  # its trust flags were checked above (see qconf.intake)
    return cfg


MAX_OVERRIDE_CHARS = 10_000


def check_override_sizes(overrides: Sequence[str]) -> None:
    """Hydra's override parser is slow on huge values; a plan never needs one this long."""
    for text in overrides:
        if len(text) > MAX_OVERRIDE_CHARS:
            raise PlanError(
                Problem(f"override '{text[:40]}...'", f"longer than {MAX_OVERRIDE_CHARS:,} "
                        "characters", "put large values in a plan file (--plan)")
            )  # fmt: skip


def _trust_problems(cfg: Any, typed: Sequence[str]) -> list[Problem]:
    """A trust flag turned on by anything but a typed `...=true`: a file may not turn it on,
    and "on" is judged both as written (`"true"`, `1`, `yes`, an interpolation) and as it
    resolves (`${oc.decode:...}` building the model section)."""
    return trust_problems(flag_values(cfg), typed_trust_flags(typed), "a config or plan file")


def primary_dir(user_dirs: tuple[Path, ...]) -> Path:
    """Hydra's primary config dir: the user's tree when given (searched first), else qconf's."""
    return user_dirs[0] if user_dirs else conf_dir()


def secondary_dirs(user_dirs: tuple[Path, ...]) -> list[Path]:
    """Searched after the primary dir, in the place Hydra gives `--config-dir` (before the
    structured-config schema): the remaining user trees, then qconf's own."""
    return [*user_dirs[1:], conf_dir()] if user_dirs else []


# Hydra reads `hydra.searchpath` from the primary config, which may be a user's file; the
# command line wins, so qconf always sets it (to nothing: the search path is built above).
SEARCH_OVERRIDES = ["hydra.searchpath=[]"]


@contextmanager
def _initialized(user_dirs: tuple[Path, ...]) -> Iterator[None]:
    """hydra.initialize_config_dir with the search path `qconf run` gives Hydra (see
    run_cmd), so that composing and running can never see different files."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup
    from hydra.version import setbase

    backup = get_gh_backup()
    setbase(None)
    search_path = create_config_search_path(str(primary_dir(user_dirs)))
    for extra in secondary_dirs(user_dirs):
        search_path.prepend("command-line", f"file://{extra}", SearchPathQuery(provider="schema"))
    GlobalHydra.instance().clear()
    Hydra.create_main_hydra2(task_name=CONFIG_NAME, config_search_path=search_path)
    try:
        yield
    finally:
        restore_gh_from_backup(backup)


def _compose(user_dirs: tuple[Path, ...], config_name: str, hydra_overrides: list[str],
             user_overrides: Sequence[str]) -> Any:  # fmt: skip
    import yaml
    from hydra import compose as hydra_compose
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with bounded_omegaconf(), _initialized(user_dirs):
            return hydra_compose(config_name, hydra_overrides, return_hydra_config=True)
    except OverrideParseException as exc:
        raise PlanError(_parse_problem(user_overrides, exc)) from None
    except MissingConfigException as exc:
        raise PlanError(_missing_option_problem(str(exc))) from None
    except yaml.YAMLError as exc:
        raise PlanError(_yaml_problem(exc)) from None
    except RecursionError:
        raise PlanError(
            Problem("config", "nested too deeply", "flatten the value or the file")
        ) from None
    except (HydraException, OmegaConfBaseException, ValueError, AttributeError, TypeError) as exc:
        # AttributeError/TypeError: Hydra on a file of the wrong shape (`hydra: null`)
        yaml_error = _yaml_cause(exc)
        if yaml_error is not None:
            raise PlanError(_yaml_problem(yaml_error)) from None
        # ValueError: Hydra's own for some bad values, e.g. `model=null`
        raise PlanError(_composition_problem(user_overrides, exc)) from None


def _yaml_cause(exc: BaseException) -> Any:
    import yaml

    for _ in range(5):  # Hydra wraps a file's YAML error in its own exception
        if isinstance(exc, yaml.YAMLError):
            return exc
        if exc.__cause__ is None and exc.__context__ is None:
            return None
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def _hydra_problems(
    cfg: Any,
    rewritten: list[str],
    user_overrides: Sequence[str],
    base: tuple[tuple[Path, ...], str] = ((), CONFIG_NAME),
) -> list[Problem]:
    """The hydra node as composed vs as the trusted tree (`base`: its dirs and config name;
    qconf's own by default) + the command line alone would make it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parser = OverridesParser.create()
    cli_hydra = [o for o in rewritten if is_hydra_override(parser.parse_override(o).key_or_group)]
    composed = OmegaConf.to_container(cfg.hydra, resolve=False)
    expected = {"hydra": [*cli_hydra, *SEARCH_OVERRIDES],
                "task": [o for o in rewritten if o not in cli_hydra]}  # fmt: skip
    if composed.get("overrides") != expected:  # type: ignore[union-attr]
        # Hydra applies hydra.overrides.* to every job of a sweep as if typed.
        return [
            Problem(
                "hydra.overrides",
                "set by a config file; Hydra would apply them as command-line overrides",
                "remove hydra.overrides from the file",
            )
        ]
    cli_keys = {parser.parse_override(o).key_or_group for o in cli_hydra}
    picks = plugin_choices(composed, cli_keys)  # type: ignore[arg-type]
    try:
        trusted = _trusted_hydra(tuple(cli_hydra + picks), *base)
    except PlanError:
        try:
            trusted = _trusted_hydra(tuple(cli_hydra), *base)
        except PlanError as exc:  # a hydra/<group> option that only a config file defines
            return [
                Problem(
                    problem.where,
                    "names a Hydra option found only in a config file (its settings would run "
                    "as Hydra's own)",
                    "use one from qconf or an installed Hydra plugin, e.g. "
                    "hydra/launcher=basic|joblib|submitit_local|submitit_slurm",
                )
                for problem in exc.problems
            ]
    return hydra_node_problems(composed, trusted)  # type: ignore[arg-type]


@cache
def _trusted_hydra(
    cli_hydra: tuple[str, ...], dirs: tuple[Path, ...] = (), config_name: str = CONFIG_NAME
) -> dict[str, Any]:
    from omegaconf import OmegaConf

    cfg = _compose(dirs, config_name, [*cli_hydra, *SEARCH_OVERRIDES], cli_hydra)
    return OmegaConf.to_container(cfg.hydra, resolve=False)  # type: ignore[return-value]


# Hydra's flags that take the next word as their value (not an override)
_HYDRA_VALUE_FLAGS = frozenset({"--cfg", "-c", "--package", "-p", "--experimental-rerun"})


def check_app_command_line(app_conf: str | Path, config_name: str, argv: Sequence[str]) -> None:
    """`app_command_line` for its checks alone (the command line is left as it is)."""
    app_command_line(app_conf, config_name, argv)


def app_command_line(app_conf: str | Path, config_name: str, argv: Sequence[str]) -> list[str]:
    """For a Hydra app of your own over qconf's tree (examples/train_lora.py), before
    `hydra.main` runs: the command line to hand Hydra, with per-part overrides rewritten as
    `qconf run` rewrites them (`quant.mapping.vae=int8wo` works without `+`, an option name
    becomes its settings, a whole mapping replaces the preset's).

    Checks first: Hydra applies a composed `hydra:` node (callbacks, `job.env_set`, run dirs)
    before the task function sees anything, so a preset from `--config-dir` must be checked
    before. Composes the app's config as its command line would (its `--config-dir` searched
    first, as Hydra does) and refuses, as a PlanError, anything a file changed in the `hydra:`
    node compared with the app's own tree and the typed hydra overrides alone."""
    items = list(argv)
    user_dir, overrides, flags = None, [], []
    while items:
        item = items.pop(0)
        if item in ("--config-dir", "-cd") and items:
            user_dir = items.pop(0)
            flags += [item, user_dir]
        elif item.startswith("--config-dir="):
            user_dir = item.split("=", 1)[1]
            flags.append(item)
        elif item in ("--config-name", "-cn") and items:
            config_name = items.pop(0)
            flags += [item, config_name]
        elif item in _HYDRA_VALUE_FLAGS and items:
            flags += [item, items.pop(0)]
        elif item.startswith("-"):
            flags.append(item)
        else:
            overrides.append(item)
    check_override_sizes(overrides)
    check_override_depth(overrides)
    own = (user_path(app_conf, "the app's config dir").resolve(),)
    dirs = (*user_config_dirs(user_dir), *own)
    rewritten = rewrite_overrides(overrides, dirs)
    cfg = _compose(dirs, config_name, [*rewritten, *SEARCH_OVERRIDES], overrides)
    problems = _hydra_problems(cfg, rewritten, overrides, (own, config_name))
    if problems:
        raise PlanError(problems)
    return [*flags, *rewritten]


def user_config_dirs(config_dir: str | Path | None) -> tuple[Path, ...]:
    if config_dir is None:
        return ()
    path = user_path(config_dir, "--config-dir").resolve()
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
        if key in _WHOLE_DICTS and override.package is None and not override.is_delete():
            result += _whole_dict(key, override.value(), text, options)
            continue
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
            result += [f"++{key}=null", f"++{key}={override_value(options[value])}"]
        elif is_part and isinstance(value, dict):
            result += [f"++{key}=null", f"++{key}={override_value(value)}"]
        else:
            result.append(f"++{key}={text.split('=', 1)[1]}")
    return result


def _whole_dict(key: str, value: Any, text: str, options: dict[str, dict]) -> list[str]:
    """`quant.mapping={...}` / `quant.kwargs={...}` replace the whole dict, as an assignment
    does in Python (Hydra would merge it into what a preset put there)."""
    if not isinstance(value, dict):
        return [f"++{key}={text.split('=', 1)[1]}"]  # null, a sweep, ...: the schema decides
    if key == "quant.mapping":
        value = {
            part: options[v] if isinstance(v, str) and v in options else v
            for part, v in value.items()
        }
    return [f"++{key}=null", f"++{key}={override_value(value)}"]


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
        f"{did_you_mean}available: {', '.join(available) or 'none'}"
        + (f" (qconf list {_LISTS[group]})" if group in _LISTS else ""),
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
