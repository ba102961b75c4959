"""Use a qconf plan from your own Hydra app: the pipeline is a `_target_` like any other object.

    python examples/hydra_app.py                       # tiny-flux, transformer in int8wo
    python examples/hydra_app.py pipe.quant.mapping.vae=int4wo

Note: inside your own app, backend option names are written as values
(`quant.mapping.<part>: int8wo`) and qconf expands them when the plan is validated.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig


@hydra.main(config_path=str(Path(__file__).parent / "conf"), config_name="app", version_base=None)
def main(cfg: DictConfig) -> None:
    # qconf validates the plan (all problems at once) before any weight is read.
    pipeline = instantiate(cfg.pipe, _convert_="all")
    image = pipeline(
        cfg.prompt, num_inference_steps=cfg.steps, height=cfg.size, width=cfg.size
    ).images[0]
    image.save("image.png")
    print(
        f"{type(pipeline).__name__}: transformer weight is "
        f"{type(pipeline.transformer.proj_out.weight).__name__}"
    )


if __name__ == "__main__":
    main()
