"""Know before you load: parameters and bytes per part, unquantized and under a plan.

Each part's module is built on the meta device from its config.json (nothing is allocated and
no weight is needed); when `*.safetensors` files are present their headers give the exact
shapes (no tensor data is read). Every tensor is then counted the way today's libraries really
allocate it: the load dtype, the modules a library keeps in fp32, the layers a backend leaves
alone (non-Linear layers, skip lists, transformers' default keys, `_keep_in_fp32_modules`) and,
for a quantized layer, the backend's byte model (`BYTE_MODELS` in byte_models.py, keyed by
registry key). A model folder is untrusted: its counts and sizes are bounded before anything is
built, and the build itself is capped (limits.py).

The byte models and the layer rules were read off real loads of the tiny pipelines with
torch 2.13, diffusers 0.42.1, transformers 5.24, torchao 0.18, bitsandbytes 0.50.2 and
optimum-quanto 0.2.7 (tests/test_estimate.py keeps them within 3 % of `qconf load`). bnb on
diffusers parts and the CUDA-only torchao types follow the same code paths, read from source.
"""

from qconf.estimate.byte_models import BYTE_MODELS, ByteModel, Layer
from qconf.estimate.core import Estimate, PartEstimate, estimate
from qconf.estimate.plot import plot

__all__ = ["BYTE_MODELS", "ByteModel", "Estimate", "Layer", "PartEstimate", "estimate", "plot"]
