"""Use a qconf plan from your own Hydra app: the pipeline is a `_target_` like any other object.

    python examples/hydra_app.py                       # tiny-flux, transformer in int8wo
    python examples/hydra_app.py pipe.quant.mapping.transformer=int4wo   # change a part
    python examples/hydra_app.py +pipe.quant.mapping.vae=int4wo          # add a part (+: Hydra)

Note: inside your own app, backend option names are written as values
(`quant.mapping.<part>: int8wo`) and qconf expands them when the plan is validated.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
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
    image.save("image.png")
    print(
        f"{type(pipeline).__name__}: transformer weight is "
        f"{type(pipeline.transformer.proj_out.weight).__name__}"
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
