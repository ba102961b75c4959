"""The `hydra:` node is trusted only as far as the command line set it.

Hydra acts on its node before any job runs: it instantiates callbacks, the launcher and the
sweeper, configures logging (handler classes and `()` factories, file paths), sets environment
variables and chooses where run folders go. A preset or any other config file that could set
those would run code or write files on the user's machine. So `compose` builds the hydra node
twice — once from every file and override, once from qconf's own tree plus only the user's
command-line `hydra` overrides — and any difference is a file setting something it may not.

The one thing a file may choose is a launcher or sweeper that qconf documents, with the
parameters that only shape the work (number of jobs, a SLURM partition), never paths or shell
lines."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from qconf.errors import Problem

# Filled by Hydra at run time or derived from the overrides: not a file's choice.
_RUNTIME_KEYS = {
    "runtime",  # written by Hydra itself when it composes (cwd, choices, sources, versions)
    "overrides",  # compared as a whole in compose
    "job.override_dirname",
    "job.id",
    "job.num",
    "job.config_name",
    "job.name",  # checked on its own: it names the log file
}
_JOB_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

_SUBMITIT_PARAMS = frozenset(
    [
        "timeout_min",
        "cpus_per_task",
        "gpus_per_node",
        "tasks_per_node",
        "mem_gb",
        "nodes",
        "name",
        "partition",
        "qos",
        "comment",
        "constraint",
        "exclude",
        "gres",
        "cpus_per_gpu",
        "gpus_per_task",
        "mem_per_gpu",
        "mem_per_cpu",
        "account",
        "max_num_timeout",
        "array_parallelism",
        "stderr_to_stdout",
    ]
)
# Launchers and sweepers qconf documents -> the parameters a config file may set on them.
ALLOWED_PLUGINS: dict[str, frozenset[str]] = {
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher": frozenset(),
    "hydra._internal.core_plugins.basic_sweeper.BasicSweeper": frozenset({"max_batch_size"}),
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher": frozenset(
        [
            "n_jobs",
            "backend",
            "prefer",
            "require",
            "verbose",
            "timeout",
            "pre_dispatch",
            "batch_size",
            "max_nbytes",
            "mmap_mode",
        ]
    ),
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher": _SUBMITIT_PARAMS,
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher": _SUBMITIT_PARAMS,
}


def is_hydra_override(key: str) -> bool:
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def hydra_node_problems(composed: Mapping[str, Any], trusted: Mapping[str, Any]) -> list[Problem]:
    """What config files changed in the hydra node (`composed`) relative to the node built
    from qconf's tree and the command line only (`trusted`). Both unresolved, plain."""
    problems: list[Problem] = []
    name = composed.get("job", {}).get("name")
    if name != trusted.get("job", {}).get("name") and not (
        isinstance(name, str) and _JOB_NAME.match(name)
    ):
        problems.append(
            Problem("hydra.job.name", f"{name!r} is not a plain name", "use letters, digits, _.-")
        )
    for plugin in ("launcher", "sweeper"):
        if composed.get(plugin) != trusted.get(plugin):
            problems += _plugin_problems(plugin, composed.get(plugin), trusted.get(plugin))
    reported: set[str] = set()
    for key in _differences(composed, trusted, ""):
        if key.split(".")[0] in ("launcher", "sweeper") or _is_runtime(key):
            continue
        shown = ".".join(key.split(".")[:2])
        if shown not in reported:
            reported.add(shown)
            problems.append(
                Problem(
                    f"hydra.{shown}",
                    "set by a config file; files may not set Hydra's callbacks, logging, "
                    "environment, search path or output folders",
                    f"remove it from the file; set hydra.{shown} on the command line if you "
                    "mean it",
                )
            )
    return problems


def _plugin_problems(plugin: str, node: Any, trusted: Any) -> list[Problem]:
    """`trusted` is the same launcher/sweeper option composed without config files (see
    `plugin_choices`), so any difference in its parameters comes from a file."""
    where = f"hydra.{plugin}"
    node = node if isinstance(node, Mapping) else {}
    trusted = trusted if isinstance(trusted, Mapping) else {}
    target = node.get("_target_")
    if target != trusted.get("_target_"):
        return [
            Problem(
                f"{where}._target_",
                f"{target!r} comes from a config file, not from an installed Hydra plugin "
                "that qconf runs",
                "pick one by name: hydra/launcher=basic|joblib|submitit_local|submitit_slurm",
            )
        ]
    allowed = ALLOWED_PLUGINS.get(str(target), frozenset())
    changed = {key for key in set(node) | set(trusted) if node.get(key) != trusted.get(key)}
    problems = [
        Problem(
            f"{where}.{key}",
            "set by a config file; files may set only "
            + (", ".join(sorted(allowed)) or "nothing")
            + f" on this {plugin}",
            f"set {where}.{key} on the command line if you mean it",
        )
        for key in sorted(changed - allowed, key=str)
    ]
    # Launchers write these values into job scripts (sbatch lines): plain words only.
    problems += [
        Problem(
            f"{where}.{key}",
            f"{node.get(key)!r} is not a plain value (number, or letters, digits and _.,:=@+/-)",
            f"set {where}.{key} on the command line if you mean it",
        )
        for key in sorted(changed & allowed, key=str)
        if not _plain_value(node.get(key))
    ]
    return problems


_PLAIN_WORD = re.compile(r"^[A-Za-z0-9_.,:=@+/-]{0,128}$")


def _plain_value(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float)):
        return True
    return isinstance(value, str) and bool(_PLAIN_WORD.match(value))


def plugin_choices(composed: Mapping[str, Any], cli_keys: set[str]) -> list[str]:
    """Overrides that pick, in the trusted composition, the launcher/sweeper options that the
    files picked — when those are plugins qconf runs — so that their defaults compare equal."""
    choices = composed.get("runtime", {}).get("choices", {})
    picks = []
    for plugin in ("launcher", "sweeper"):
        group = f"hydra/{plugin}"
        target = (composed.get(plugin) or {}).get("_target_")
        if target in ALLOWED_PLUGINS and group not in cli_keys and choices.get(group):
            picks.append(f"{group}={choices[group]}")
    return picks


def _is_runtime(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in _RUNTIME_KEYS)


def _differences(a: Any, b: Any, path: str) -> Iterator[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                yield sub
            else:
                yield from _differences(a[key], b[key], sub)
    elif a != b:
        yield path or "(root)"
