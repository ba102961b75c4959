"""The help pages of `qconf run` and `qconf compare` (Hydra's own page stays behind
`--hydra-help`): what the command does, the overrides it takes with their defaults as qconf's
conf tree has them, where output goes, exit codes. Torch-free, built from the conf tree."""

from __future__ import annotations

from typing import Any

_WIDTH = 100


def _defaults() -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(default model option, model: section, run: section) of qconf's primary config."""
    from qconf.plan.compose import CONFIG_NAME
    from qconf.plan.conftree import conf_dir
    from qconf.trust.yamlsafe import load_yaml_file

    primary = load_yaml_file(conf_dir() / f"{CONFIG_NAME}.yaml") or {}
    model = next((entry["model"] for entry in primary.get("defaults", [])
                  if isinstance(entry, dict) and "model" in entry), "?")  # fmt: skip
    return str(model), primary.get("model") or {}, primary.get("run") or {}


def _names(group: str) -> list[str]:
    from qconf.plan.conftree import group_options

    return list(group_options(group))


def _wrapped(label: str, items: list[str]) -> list[str]:
    import textwrap

    return textwrap.wrap(", ".join(items), _WIDTH, initial_indent=f"  {label:<35}",
                         subsequent_indent=" " * 37, break_on_hyphens=False)  # fmt: skip


def _yaml(value: Any) -> str:
    return "null" if value is None else str(value)


def overrides_section() -> str:
    model, model_section, run = _defaults()
    presets = _names("preset")
    lines = [
        "overrides (key=value, as many as you like; qconf's defaults shown):",
        *_wrapped(
            "model=NAME", [f"{model} (default)"] + [m for m in _names("model") if m != model]
        ),  # fmt: skip
        f"  {'preset=NAME':<35}none; {len(presets)} built in (qconf list presets), "
        f"e.g. {'flux-int8wo' if 'flux-int8wo' in presets or not presets else presets[0]}",
        *_wrapped("quant.mapping.<part>=<option>", _names("backend")),
        f"  {'':<35}=null leaves the part unquantized; qconf list options",
        f"  {'quant.mapping.<part>.kwargs.K=V':<35}one setting of that part's option",
        f"  {'quant.backend=B quant.kwargs.K=V':<35}global mode (one backend for every part)",
        f"  {'model.source=ID|DIR':<35}a hub id, a local pipeline folder or a tiny-* model",
        f"  {'model.torch_dtype=DTYPE':<35}{_yaml(model_section.get('torch_dtype'))}",
        f"  {'model.device_map=MAP':<35}{_yaml(model_section.get('device_map'))} "
        "(balanced | cuda | cpu)",
    ]
    for key, value in run.items():
        text = f"run.{key}=" + {"prompt": "TEXT", "guidance_scale": "X"}.get(key, "N")
        if key in ("prompt", "seed"):
            text += " | '[a,b]'"
        video = {"num_frames": " (video pipelines; null: the pipeline's own clip)",
                 "fps": " (video pipelines; null: the model's rate)"}.get(key, "")  # fmt: skip
        lines.append(f"  {text:<35}{_yaml(value)}{video}")
    lines.append(f"  {'':<35}a list of prompts or seeds makes one image each")
    return "\n".join(lines)


FLAGS = """flags:
  --config-dir DIR   your own config groups (preset/, backend/, model/), searched before qconf's
  -cn NAME           another primary config (in --config-dir)
  --plan FILE        a plan file (qconf show --yaml prints one); typed overrides apply on top
  --hydra-help       Hydra's own help (--cfg job|hydra prints the composed config)"""

EXIT_CODES = """exit codes: 0 ok; 2 your input is wrong (one line per problem on stderr, nothing
  written); 1 a bug; 130 interrupted (Ctrl-C: one line says what finished and what to do)"""

RUN_HELP = """usage: qconf run [--config-dir DIR] [-cn NAME] [--plan FILE] [-m] [OVERRIDES...]

Loads the pipeline under the plan, generates one image per (prompt, seed) of run.*, and writes
the image(s), plan.yaml (the resolved plan) and report.json (bytes per part, load seconds,
seconds per image, peak memory) into the run folder. Every job's plan is checked before the
first starts (also that a hub model is downloaded when this machine is offline).

{overrides}

{flags}
  -m, --multirun     a sweep: one job per combination of key=a,b values;
                     hydra/launcher=joblib | submitit_local | submitit_slurm picks the launcher

output: outputs/<date>/<time>/ (hydra.run.dir=DIR); with -m multirun/<date>/<time>/<job>/
  (hydra.sweep.dir=DIR). A job that fails on your input leaves no folder. Put a sweep's runs
  side by side with `qconf compare DIR`.

{exit_codes}
"""

COMPARE_HELP = """usage: qconf compare [--config-dir DIR] [-cn NAME] [--plan FILE] [--no-baseline]
                     SWEEP...       (plans to compare: key=a,b overrides)
       qconf compare DIR            (gather a sweep folder that already ran)

Runs every plan of the sweep (e.g. quant.mapping.transformer=int8wo,int4wo), plus the
unquantized baseline, on the same prompts and seeds, as a Hydra multirun of `qconf run`; then
writes compare.md, compare.json (bytes, peak memory, load and generation seconds, PSNR/SSIM),
compare.png (image grid) and pareto.png into the sweep folder.
  --no-baseline   skip the unquantized run (when it cannot fit); the first plan is the reference
Every job is one model's plan with the same run.* settings: give several prompts or seeds as
one list ('run.seed=[0,1]'); run.seed=0,1 would sweep them as separate plans.

{overrides}

{flags}
  hydra/launcher=joblib | submitit_local | submitit_slurm   run the jobs with that launcher

output: multirun/<date>/<time>/ (hydra.sweep.dir=DIR): baseline/, 0/, 1/, ... (one `qconf run`
  folder each), sweep.json (what this sweep is), and the tables and pictures above.
resume: after a Ctrl-C or a failed job, run the same command with hydra.sweep.dir=DIR again:
  finished runs are kept, the others run. A folder holding another sweep is refused.

{exit_codes}
"""


def run_help() -> str:
    return RUN_HELP.format(overrides=overrides_section(), flags=FLAGS, exit_codes=EXIT_CODES)


def compare_help() -> str:
    return COMPARE_HELP.format(overrides=overrides_section(), flags=FLAGS, exit_codes=EXIT_CODES)
