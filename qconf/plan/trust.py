"""The two flags that let a model run code (`model.trust_remote_code`, `model.allow_pickle`):
only what the user types may turn them on. A file (preset, --config-dir, --plan, a user's Hydra
app config) may set them to false at most, judged both as written and as resolved."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from qconf.errors import Problem
from qconf.plan.interpolation import check_interpolation_count, no_environment_reads

# Flags that let a model run code: only what the user types may turn them on.
TRUST_FLAGS = ("model.allow_pickle", "model.trust_remote_code")


def flag_values(cfg: Any) -> dict[str, list[Any]]:
    """{flag: [value as written, value as resolved]} of the trust flags in `cfg` (a config
    node or plain data). Resolved under qconf's resolver guard; a value that cannot be resolved
    counts as written (validation reports why it cannot)."""
    from omegaconf import OmegaConf

    values: dict[str, list[Any]] = {flag: [] for flag in TRUST_FLAGS}
    if not OmegaConf.is_config(cfg):
        model = cfg.get("model") if isinstance(cfg, dict) else None
        for flag in TRUST_FLAGS:
            values[flag].append(model.get(flag.split(".")[1]) if isinstance(model, dict) else None)
        return values

    node = cfg._get_node("model") if OmegaConf.is_dict(cfg) else None
    written = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_dict(node) else None
    check_interpolation_count(OmegaConf.to_container(cfg, resolve=False))  # before resolving
    try:
        with no_environment_reads():
            model = OmegaConf.select(cfg, "model")
            resolved = (
                OmegaConf.to_container(model, resolve=True) if OmegaConf.is_config(model) else model
            )
    except Exception:  # a reference or resolver that fails: validation says so in one line
        resolved = None
    for flag in TRUST_FLAGS:
        key = flag.split(".")[1]
        for section in (written, resolved):
            values[flag].append(section.get(key) if isinstance(section, dict) else None)
        if node is not None and not OmegaConf.is_dict(node):  # `model: ${...}` as a whole
            values[flag].append(f"${{...}} ({str(node._value())[:40]})")
    return values


def typed_trust_flags(typed: Sequence[str]) -> set[str]:
    """The trust flags that `typed` overrides set to true (a boolean true)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    found = set()
    for text in typed:
        override = parser.parse_override(text)
        key = override.key_or_group
        if key in TRUST_FLAGS and not override.is_delete() and override.value() is True:
            found.add(key)
    return found


def trust_problems(values: dict[str, list[Any]], typed: set[str], source: str) -> list[Problem]:
    """Trust flags that `source` turned on: any value but false/absent, unless typed."""
    problems = []
    for flag in TRUST_FLAGS:
        found = [value for value in values.get(flag, []) if value not in (None, False)]
        if found and flag not in typed:
            value = found[0]
            problems.append(
                Problem(
                    flag,
                    (f"turned on by {source}" if value is True else
                     f"set to {str(value)[:40]!r} by {source}") + "; it lets the model run code",
                    f"type {flag}=true on the command line if you trust this model",
                )
            )  # fmt: skip
    return problems


COMPOSED_FLAG = "qconf_composed"


def app_trust_problems(data: Any, source: str) -> list[Problem]:
    """Trust flags in config a user's running Hydra app composed from its own files (`data`:
    resolved plain data, every `model:` section in it at any depth): only the app's command
    line may turn them on. Outside a running Hydra app, data is the Python caller's own."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    typed = {
        flag
        for flag in TRUST_FLAGS
        for key, value in _typed_app_overrides()
        if (key == flag or key.endswith("." + flag)) and value is True
    }
    problems: list[Problem] = []
    for model in _model_sections(data):
        problems += trust_problems(flag_values({"model": model}), typed, source)
    return list(dict.fromkeys(problems))


def _model_sections(data: Any, depth: int = 0) -> Iterator[dict]:
    if depth > 64:
        return
    if isinstance(data, dict):
        if isinstance(data.get("model"), dict):
            yield data["model"]
        for value in data.values():
            yield from _model_sections(value, depth + 1)
    elif isinstance(data, (list, tuple)):
        for value in data:
            yield from _model_sections(value, depth + 1)


def _typed_app_overrides() -> list[tuple[str, Any]]:
    """(key, value) of what was typed on the running app's command line: sys.argv itself,
    not Hydra's record of it (a config file can add to `hydra.overrides.task`)."""
    import sys

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    typed = []
    for text in sys.argv[1:]:
        if text.startswith("-") or "=" not in text:
            continue
        try:
            override = parser.parse_override(text)
        except HydraException:
            continue
        if not override.is_delete():
            typed.append((override.key_or_group, override.value()))
    return typed
