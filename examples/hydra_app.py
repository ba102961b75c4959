"""Use a qconf plan from your own Hydra app: the pipeline is a `_target_` like any other object.

    python examples/hydra_app.py                       # tiny-flux, transformer in int8wo
    python examples/hydra_app.py pipe.quant.mapping.transformer=int4wo   # change a part
    python examples/hydra_app.py +pipe.quant.mapping.vae=int4wo          # add a part (+: Hydra)

Note: inside your own app, backend option names are written as values
(`quant.mapping.<part>: int8wo`) and qconf expands them when the plan is validated. An app whose
config holds the plan at its top level (model:, quant:, run: beside keys of its own) can pass the
whole config: `qconf.load_pipeline(cfg)` takes the plan's sections and leaves the rest.
The image goes to Hydra's run folder (outputs/<date>/<time>/image.png).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import qconf


@hydra.main(config_path=str(Path(__file__).parent / "conf"), config_name="app", version_base=None)
def main(cfg: DictConfig) -> None:
    # safe_instantiate refuses `_target_`s outside qconf/diffusers/transformers/torchao, and
    # qconf validates the plan (all problems at once) before any weight is read.
    try:
        pipeline = qconf.safe_instantiate(cfg.pipe)
    except qconf.QconfError as exc:  # one line per problem, exit 2 (as qconf's own commands)
        _refuse(exc)
    image = pipeline(
        cfg.prompt, num_inference_steps=cfg.steps, height=cfg.size, width=cfg.size
    ).images[0]
    out = Path(HydraConfig.get().runtime.output_dir)  # never the folder the app was started in
    image.save(out / "image.png")
    print(
        f"{type(pipeline).__name__}: transformer weight is "
        f"{type(pipeline.transformer.proj_out.weight).__name__}; wrote {out / 'image.png'}"
    )


def _refuse(exc: qconf.QconfError) -> None:
    from qconf.text import safe

    print(*(f"error: {safe(line)}" for line in exc.lines), sep="\n", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    # Hydra applies the composed `hydra:` node before main() runs: check it first.
    try:
        qconf.check_app_command_line(Path(__file__).parent / "conf", "app", sys.argv[1:])
    except qconf.QconfError as exc:
        _refuse(exc)
    main()
