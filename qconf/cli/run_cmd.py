"""`qconf run`: the main job, a Hydra app (run folders, -m multirun, sweepers work as usual).

Loads the pipeline with the plan, generates one image (settings under `run:`), and writes
image.png, plan.yaml (the resolved plan) and report.json into Hydra's output folder."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qconf.compose import rewrite_overrides
from qconf.paths import conf_dir

# Hydra flags that take a value (everything else starting with '-' is a switch).
_VALUE_FLAGS = {"--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp", "--cfg",
                "-c", "--package", "-p", "--info", "--experimental-rerun"}  # fmt: skip


def main(argv: list[str]) -> int:
    flags, overrides = _split(argv)
    config_dir = _flag_value(flags, "--config-dir", "-cd")
    multirun = "-m" in flags or "--multirun" in flags
    if not multirun and not any(f in flags for f in ("-h", "--help", "--hydra-help")):
        _preflight(overrides, config_dir)  # user errors exit 2 before Hydra makes a run folder
    extra = (Path(config_dir).expanduser().resolve(),) if config_dir else ()
    argv_for_hydra = flags + rewrite_overrides(overrides, extra)
    return _hydra_run(argv_for_hydra)


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    flags: list[str] = []
    overrides: list[str] = []
    items = iter(argv)
    for item in items:
        if item.startswith("-") and "=" not in item:
            flags.append(item)
            if item in _VALUE_FLAGS:
                flags.append(next(items, ""))
        else:
            overrides.append(item)
    return flags, overrides


def _flag_value(flags: list[str], *names: str) -> str | None:
    for i, flag in enumerate(flags[:-1]):
        if flag in names:
            return flags[i + 1]
    return None


def _preflight(overrides: list[str], config_dir: str | None) -> None:
    from qconf.compose import compose
    from qconf.environment import check_environment
    from qconf.schema import validate

    plan = validate(compose(overrides, config_dir=config_dir), config_dir=config_dir)
    check_environment(plan.resolve())


def _hydra_run(argv: list[str]) -> int:
    import hydra

    task: Callable[[Any], None] = hydra.main(
        config_path=str(conf_dir()), config_name="qconf", version_base=None
    )(generate)
    saved = sys.argv
    sys.argv = ["qconf run", *argv]
    try:
        task()
    finally:
        sys.argv = saved
    return 0


def generate(cfg: Any) -> None:
    """One Hydra job: load, generate, write the three files atomically."""
    import torch
    import yaml
    from hydra.core.hydra_config import HydraConfig

    from qconf.cli.load_cmd import print_report
    from qconf.loader import load
    from qconf.schema import validate

    plan = validate(cfg)
    loaded = load(plan)
    settings = plan.run
    image = loaded.pipeline(
        prompt=settings.prompt,
        num_inference_steps=settings.steps,
        height=settings.height,
        width=settings.width,
        guidance_scale=settings.guidance_scale,
        generator=torch.Generator().manual_seed(settings.seed),
    ).images[0]
    out = Path(HydraConfig.get().runtime.output_dir)
    _write_atomic(out / "image.png", lambda f: image.save(f, format="PNG"))
    plan_text = yaml.safe_dump(loaded.resolved.to_json(), sort_keys=False)
    _write_atomic(out / "plan.yaml", lambda f: f.write(plan_text.encode()))
    report_text = json.dumps(loaded.report.to_json(), indent=2)
    _write_atomic(out / "report.json", lambda f: f.write(report_text.encode()))
    print_report(loaded.report)
    print(f"wrote {out / 'image.png'}, plan.yaml, report.json")


def _write_atomic(target: Path, write: Callable[[Any], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
