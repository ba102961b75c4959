"""Small, exact checks of the estimator's pieces on tiny-flux's config files (no weights loaded):
the LoRA estimate (qconf/estimate/training.py) counted from CLIP's documented layout, and the
estimate's JSON and load-peak rule (qconf/estimate/core.py) from hand-made part estimates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import qconf
from qconf.errors import PlanError
from qconf.estimate.core import Estimate, PartEstimate

pytest.importorskip("torch")
pytest.importorskip("transformers.models.clip.modeling_clip")  # at collection: once per run


def _clip_config() -> dict[str, Any]:
    from qconf.source.tiny import tiny_pipeline_path

    path = tiny_pipeline_path("tiny-flux") / "text_encoder" / "config.json"
    return json.loads(path.read_text())


def _plan(dtype: str | None = "bfloat16") -> Any:
    model: dict[str, Any] = {"source": "tiny-flux"}
    if dtype:
        model["torch_dtype"] = dtype
    return qconf.intake(model=model)


def test_lora_on_clip_counts_every_attention_projection() -> None:
    """CLIP's encoder layers each have q_proj, k_proj, v_proj and out_proj, hidden -> hidden:
    transformers' default LoRA targets take all four, rank x (in + out) parameters each."""
    from qconf.estimate.training import lora_estimate

    config = _clip_config()
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    found = lora_estimate(_plan(), ["text_encoder"], rank=3)
    assert set(found) == {"text_encoder"}
    lora = found["text_encoder"]
    assert (lora.part, lora.rank, lora.layers) == ("text_encoder", 3, 4 * layers)
    assert lora.params == 4 * layers * 3 * (hidden + hidden)
    assert lora.dtype_bytes == 2  # bfloat16: the part's load dtype
    # weights, gradients and AdamW's two moments
    assert lora.bytes == {
        "weights": lora.params * 2,
        "gradients": lora.params * 2,
        "adamw_states": 2 * lora.params * 2,
    }
    assert lora.total_bytes == 4 * lora.params * 2
    assert lora.to_json() == {
        "rank": 3,
        "layers": 4 * layers,
        "lora_params": lora.params,
        "weights_bytes": lora.params * 2,
        "gradients_bytes": lora.params * 2,
        "adamw_states_bytes": 4 * lora.params,
        "total_bytes": 8 * lora.params,
    }


def test_lora_targets_match_whole_trailing_names() -> None:
    from qconf.estimate.training import lora_estimate

    config = _clip_config()
    hidden, inner, layers = (
        config["hidden_size"],
        config["intermediate_size"],
        config["num_hidden_layers"],
    )
    fc1 = lora_estimate(_plan("float32"), ["text_encoder"], targets=["fc1"])["text_encoder"]
    assert (fc1.layers, fc1.rank) == (layers, 4)  # rank 4 unless given
    assert fc1.params == layers * 4 * (hidden + inner)
    assert fc1.dtype_bytes == 4  # float32
    model = {"source": "tiny-flux", "torch_dtype": None}  # no load dtype: the libraries' float32
    untyped = lora_estimate(qconf.intake(model=model), ["text_encoder"], targets=["fc1"])
    assert untyped["text_encoder"].dtype_bytes == 4
    # "proj" is not the trailing name of q_proj; "mlp.fc2" is a dotted trailing name
    assert lora_estimate(_plan(), ["text_encoder"], targets=["proj"])["text_encoder"].layers == 0
    fc2 = lora_estimate(_plan(), ["text_encoder"], targets=["mlp.fc2"])["text_encoder"]
    assert fc2.params == layers * 4 * (inner + hidden)
    both = lora_estimate(_plan(), ["text_encoder", "text_encoder_2"], rank=1)
    assert set(both) == {"text_encoder", "text_encoder_2"}


def test_lora_on_a_part_without_weights_is_refused() -> None:
    from qconf.estimate.training import lora_estimate

    with pytest.raises(PlanError) as caught:
        lora_estimate(_plan(), ["tokenizer"])
    (problem,) = caught.value.problems
    assert problem.where == "--train tokenizer"
    assert problem.what == "not a weight-bearing part of FluxPipeline"
    assert problem.fix.startswith("use one of: ")
    named = set(problem.fix.removeprefix("use one of: ").split(", "))
    assert named == {"transformer", "text_encoder", "text_encoder_2", "vae"}


# --- the estimate object ------------------------------------------------------------------------


def _part(name: str, backend: str | None, size: int, ratio: float, **kw: Any) -> PartEstimate:
    return PartEstimate(name, "diffusers", "X", backend, 10, 2 * size, size,
                        load_peak_ratio=ratio, **kw)  # fmt: skip


def test_estimate_totals_peak_and_json() -> None:
    parts = {
        "transformer": _part("transformer", "torchao", 1000, 1.25, notes=("a", "b")),
        "vae": _part("vae", None, 333, 1.0),
    }
    est = Estimate("FluxPipeline", "/x", "bfloat16", parts)
    assert est.total_bytes == 1333 and est.total_bytes_unquantized == 2666
    assert parts["transformer"].load_peak_bytes == 1250
    assert _part("p", "quanto", 3, 1.5).load_peak_bytes == 5  # rounded up: 4.5 -> 5
    assert est.load_peak_bytes == 1250 + 333
    assert est.notes == ["transformer: a", "transformer: b"]
    assert est.peak_rule == "1.25 x transformer while quantizing on load, 1 x the rest"
    assert est.to_json() == {
        "components": {
            "transformer": {"params": 10, "bytes_unquantized": 2000, "bytes": 1000},
            "vae": {"params": 10, "bytes_unquantized": 666, "bytes": 333},
        },
        "total_bytes": 1333,
        "load_peak_bytes": 1583,
    }
    two = Estimate("P", "/x", None, {"a": _part("a", "torchao", 1, 1.1),
                                     "b": _part("b", "quanto", 1, 2.4)})  # fmt: skip
    assert two.peak_rule == "1.1 x a, 2.4 x b while quantizing on load, 1 x the rest"
    plain = Estimate("P", "/x", None, {"vae": _part("vae", None, 5, 1.0)})
    assert plain.peak_rule == "the weights: nothing is quantized on load"
    assert plain.notes == []


def test_lora_reads_the_folder_it_is_given(tmp_path: Path) -> None:
    """`folder` replaces the plan's source: a copy of tiny-flux's config files whose CLIP has
    one more layer (no weights: the estimate reads config.json only)."""
    from qconf.estimate.training import lora_estimate
    from qconf.source.tiny import tiny_pipeline_path

    source = tiny_pipeline_path("tiny-flux")
    shutil.copytree(source, tmp_path / "copy", ignore=shutil.ignore_patterns("*.safetensors"))
    config_path = tmp_path / "copy" / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_hidden_layers"] += 1
    config_path.write_text(json.dumps(config))
    found = lora_estimate(_plan(), ["text_encoder"], folder=tmp_path / "copy")["text_encoder"]
    assert found.layers == 4 * config["num_hidden_layers"]
