"""`qconf estimate` against real loads of the tiny pipelines, its JSON contract, config-only
folders, and that it allocates nothing for a full-width Flux.1-dev."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import qconf
from qconf.backends import REGISTRY, known_failures_ignored
from qconf.cli.main import main
from qconf.loading.environment import cpu_runnable_options
from qconf.plan.conftree import backend_options

REPO = Path(__file__).resolve().parents[1]
FLUX_DEV = REPO / "bench" / "full_width" / "flux-dev"
PARTS = {
    "tiny-flux": ("transformer", "text_encoder", "text_encoder_2", "vae"),
    "tiny-sd": ("unet", "text_encoder", "vae"),
    "tiny-sd3": ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae"),
}
# Options that quantize on load and run on CPU on every part; the ones that need a GPU on
# diffusers parts only are checked on the text encoders (e.g. bitsandbytes).
OPTIONS = backend_options()
CPU_OPTIONS = [
    n for n in cpu_runnable_options() if REGISTRY[OPTIONS[n]["backend"]].quantizes_on_load
]
BNB_OPTIONS = [
    n
    for n, o in OPTIONS.items()
    if set(REGISTRY[o["backend"]].needs_cuda) == {"diffusers"}
    and "transformers" in REGISTRY[o["backend"]].config_class
]
TOLERANCE = 0.03


def _case_parts(model: str, option: str) -> list[str]:
    if option in BNB_OPTIONS:
        return [p for p in PARTS[model] if p.startswith("text_encoder")]
    return list(PARTS[model])


CASES = [(m, o) for m in PARTS for o in [*CPU_OPTIONS, *BNB_OPTIONS]]


@pytest.mark.parametrize(("model", "option"), CASES, ids=[f"{m}-{o}" for m, o in CASES])
def test_estimate_matches_a_real_load(model: str, option: str) -> None:
    pytest.importorskip(REGISTRY[OPTIONS[option]["backend"]].module)
    from qconf.estimate import estimate

    overrides = [
        f"model={model}",
        *(f"quant.mapping.{p}={option}" for p in _case_parts(model, option)),
    ]
    plan = qconf.validate(qconf.compose(overrides))
    # bytes, not forwards: a combination whose forward is known to fail here (quanto-int8 on a
    # bf16 AutoencoderKL on CPU) still loads, and its bytes are what the estimate is about
    with known_failures_ignored():
        measured = qconf.load(plan).report.parts
    estimated = estimate(plan).parts
    assert set(measured) <= set(estimated)
    for name, real in measured.items():
        guess = estimated[name]
        assert guess.params == real.params, name
        assert guess.bytes == pytest.approx(real.bytes, rel=TOLERANCE), name
        # the report counts quanto's scale buffers as unquantized bytes too; a few bytes a layer
        assert guess.bytes_unquantized == pytest.approx(real.bytes_unquantized, rel=TOLERANCE)
        if name in _case_parts(model, option):
            assert guess.quantized_layers == sum(real.quantized_layers.values()), name


def test_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["estimate", "--json", "model=tiny-flux", "quant.mapping.transformer=int8wo"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"components", "total_bytes", "load_peak_bytes"}
    assert set(data["components"]) == set(PARTS["tiny-flux"])
    for part in data["components"].values():
        assert set(part) == {"params", "bytes_unquantized", "bytes"}
        assert all(isinstance(v, int) and v > 0 for v in part.values())
    assert data["total_bytes"] == sum(p["bytes"] for p in data["components"].values())
    transformer = data["components"]["transformer"]
    assert transformer["bytes"] < transformer["bytes_unquantized"]


def test_table_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    target = tmp_path / "estimate.png"
    assert (
        main(["estimate", "--plot", str(target), "model=tiny-sd", "quant.mapping.unet=int8wo"]) == 0
    )
    out = capsys.readouterr().out
    assert "unet" in out and "total" in out
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_only_folder_equals_folder_with_weights(tmp_path: Path) -> None:
    from qconf.estimate import estimate
    from qconf.source.tiny import tiny_pipeline_path

    source = tiny_pipeline_path("tiny-sd3")
    shutil.copy(source / "model_index.json", tmp_path)
    for config in source.glob("*/config.json"):
        (tmp_path / config.parent.name).mkdir()
        shutil.copy(config, tmp_path / config.parent.name)
    assert not list(tmp_path.rglob("*.safetensors"))
    mapping = ["quant.mapping.transformer=int4wo", "quant.mapping.text_encoder_3=quanto-int8"]
    with_weights = estimate(qconf.validate(qconf.compose(["model=tiny-sd3", *mapping])))
    config_only = estimate(qconf.validate(qconf.compose([f"model.source={tmp_path}", *mapping])))
    assert config_only.to_json() == with_weights.to_json()
    assert all(p.from_weights for p in with_weights.parts.values())
    assert not any(p.from_weights for p in config_only.parts.values())


def test_full_width_flux_dev_allocates_nothing(tmp_path: Path) -> None:
    # A fresh interpreter measures only the one `qconf estimate` it runs (RUSAGE_CHILDREN of this
    # test process would include every subprocess earlier tests started).
    probe = (
        "import json, resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
        "print(json.dumps({'rc': done.returncode, 'out': done.stdout, 'peak': peak}))\n"
    )
    command = [str(Path(sys.executable).with_name("qconf")), "estimate", "--json"]
    command += ["preset=flux-nf4", f"model.source={FLUX_DEV}"]
    result = json.loads(
        subprocess.run(
            [sys.executable, "-c", probe, *command], capture_output=True, text=True, check=True
        ).stdout
    )
    assert result["rc"] == 0
    assert result["peak"] < 2**30
    parts = json.loads(result["out"])["components"]
    assert parts["transformer"]["params"] == pytest.approx(11.90e9, rel=0.01)
    assert parts["text_encoder_2"]["params"] == pytest.approx(4.76e9, rel=0.01)
    assert parts["text_encoder"]["params"] == pytest.approx(123e6, rel=0.01)
    assert parts["vae"]["params"] == pytest.approx(83.8e6, rel=0.01)
    # today's libraries: T5's `wo` stays bf16 under nf4 -> about 10.6 GiB (the 2025 blog: 12.58)
    total = sum(p["bytes"] for p in parts.values()) / 2**30
    assert total == pytest.approx(10.6, abs=0.15)


def test_hub_id_without_local_files_is_a_user_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # online, only its config files would be fetched
    code = main(["estimate", "model.source=acme/not-here", "model.pipeline=FluxPipeline"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1
    assert lines[0].startswith("error: model.source:") and "local folder" in lines[0]


def test_every_quantizing_backend_has_a_byte_model() -> None:
    from qconf.estimate import BYTE_MODELS

    # a backend the installed libraries cannot run (modelopt) has no measured layout to model
    usable = {k for k, s in REGISTRY.items() if s.unusable is None or s.unusable() is None}
    on_load = {key for key in usable if REGISTRY[key].quantizes_on_load}
    assert on_load == set(BYTE_MODELS) & usable
    assert all(spec.quantizes_on_load or spec.byte_model is None for spec in REGISTRY.values())


def test_an_exact_parameter_name_on_the_skip_list_is_priced_as_diffusers_loads_it() -> None:
    """diffusers' torchao quantizer skips `key` when `key.` is in the parameter name *or* key is
    the parameter name: `proj_out.weight` keeps proj_out alone, `proj_out` also the blocks'."""
    from qconf.estimate import estimate

    for skip, kept in (("[proj_out.weight]", 1), ("[proj_out]", 2)):
        cfg = qconf.compose(["quant.mapping.transformer=int8wo",
                             f"quant.mapping.transformer.skip={skip}"])  # fmt: skip
        estimated = estimate(qconf.validate(cfg)).parts["transformer"]
        loaded = qconf.load(cfg).report.parts["transformer"]
        assert estimated.quantized_layers == sum(loaded.quantized_layers.values()) == 30 - kept
        assert estimated.bytes == loaded.bytes


@pytest.mark.parametrize("width", [48, 40])
def test_quanto_int4_that_cannot_pack_on_a_cpu_is_said_to_fail(tmp_path: Path, width: int) -> None:
    """optimum-quanto hands bf16 int4 weights in groups of 128 to tinygemm, whose CPU packing
    needs out_features % 16 == 0 (Qwen2.5-VL's vision MLP, 3420 wide, stops the load): a CLIP
    with a 256-wide input and an MLP `width` wide loads (48) or fails (40) as estimated."""
    pytest.importorskip("optimum.quanto")
    import torch
    import transformers

    from qconf.estimate import estimate
    from qconf.source.tiny import tiny_pipeline_path

    source = tiny_pipeline_path("tiny-flux")
    shutil.copy(source / "model_index.json", tmp_path)
    config = transformers.CLIPTextConfig.from_pretrained(source / "text_encoder")
    config.hidden_size, config.intermediate_size = 256, width
    torch.manual_seed(0)
    transformers.CLIPTextModel(config).to(torch.bfloat16).save_pretrained(tmp_path / "text_encoder")
    for part in ("text_encoder_2", "transformer", "vae"):
        (tmp_path / part).mkdir()
        shutil.copy(source / part / "config.json", tmp_path / part)
    plan = qconf.validate(
        qconf.compose([f"model.source={tmp_path}", "quant.mapping.text_encoder=quanto-int4"])
    )
    estimated = estimate(plan).parts["text_encoder"]
    failing = [n for n in estimated.notes if "not a multiple of 16" in n and "fails" in n]
    if width % 16:
        assert failing
        with pytest.raises(RuntimeError):
            qconf.load_part(plan, "text_encoder")
        return
    assert not failing
    from qconf.loading.report import measure_part

    loaded = measure_part("text_encoder", qconf.load_part(plan, "text_encoder"), "", None, None)
    assert estimated.bytes == loaded.bytes
