"""A tiny config-only DDPM pipeline (one UNet2DModel part), written where a test wants it, and
its bytes counted by hand.

The tiny UNet2DModel (one 8-channel level, one resnet a down block, no attention, 3 -> 3
channels) has, counted from diffusers' layer layout:
  conv_in 3*8*9+8 = 224; time embedding 8->32->32: 288 + 1056 = 1344;
  a resnet 8->8 with a 32-wide time embedding: 2 GroupNorms 16 + 16, two 3x3 convs 584 + 584,
  time_emb_proj 32*8+8 = 264: 1464; the down block one, the mid block two: 3 * 1464 = 4392;
  the up block two resnets 16->8 (skip concatenated): GroupNorm(16) 32, conv 16*8*9+8 = 1160,
  time_emb_proj 264, GroupNorm(8) 16, conv 584, 1x1 shortcut 16*8+8 = 136: 2 * 2192 = 4384;
  conv_norm_out 16, conv_out 8*3*9+3 = 219.
  Sum: 10579 parameters, 21158 bytes in bfloat16.
int8wo (torchao Int8Tensor: int8 weight, fp32 scale and int8 zero point per row) quantizes its
seven Linear layers: linear_1 32x8, linear_2 32x32 and five time_emb_proj 8x32, 2560 weights and
104 rows: 2560 + 104 * 5 = 3080 bytes instead of 2 * 2560 = 5120, so 21158 - 2040 = 19118; its
load peak is 1.1 x that, rounded up: 21030.
"""

from __future__ import annotations

import json
from pathlib import Path

PARAMS = 10579
BF16 = 2 * PARAMS
INT8WO = BF16 - 2 * 2560 + 2560 + 104 * 5
INT8WO_PEAK = 21030  # ceil(1.1 * 19118)
UNET = {
    "_class_name": "UNet2DModel",
    "sample_size": 8,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [8],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"],
    "norm_num_groups": 4,
    "add_attention": False,
}
MODEL_INDEX = {
    "_class_name": "DDPMPipeline",
    "scheduler": ["diffusers", "DDPMScheduler"],
    "unet": ["diffusers", "UNet2DModel"],
}


def write_ddpm(folder: Path, unet: dict | None = None) -> Path:
    """The pipeline's model_index.json and unet/config.json in `folder` (no weights)."""
    (folder / "unet").mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX))
    (folder / "unet" / "config.json").write_text(json.dumps(UNET if unet is None else unet))
    return folder
