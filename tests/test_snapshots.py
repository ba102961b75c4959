"""Config-only snapshots of the presets' models: provenance, published parameter counts, offline
estimates, `qconf list presets --fits`.

Every count below is built from the shipped config.json files on the meta device (nothing
allocated) and compared with a published figure, within 1 % or half a unit of the figure's last
published digit, whichever is larger (a model card's "2 billion" says no more than 1.5-2.5 B).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import qconf
from qconf.backends import REGISTRY
from qconf.cli.main import main as cli_main
from qconf.estimate import estimate
from qconf.estimate.presets import estimate_presets, fitting, parse_size
from qconf.estimate.snapshots import shipped, snapshots_root

BLOG = "https://huggingface.co/blog/diffusers-quantization (Flux.1-dev bf16 bytes per part / 2)"
SDXL = "Podell et al., SDXL, arXiv:2307.01952, sec. 2.1 (UNet 2.6B, text encoders 817M)"
T5 = "the same google/t5-v1_1-xxl encoder as FLUX.1-dev's text_encoder_2"
WAN = "Wan team, Wan: Open and Advanced Large-Scale Video Generative Models, arXiv:2503.20314"

# (hub id, parts summed, published parameters, unit of the last published digit, citation)
PUBLISHED = [
    ("black-forest-labs/FLUX.1-dev", ("transformer",), 11.9e9, 0.05e9, f"{BLOG}: 23.8 GB"),
    ("black-forest-labs/FLUX.1-dev", ("text_encoder_2",), 4.76e9, 0.005e9, f"{BLOG}: 9.52 GB"),
    ("black-forest-labs/FLUX.1-dev", ("text_encoder",), 0.125e9, 0.005e9, f"{BLOG}: 0.25 GB"),
    ("black-forest-labs/FLUX.1-dev", ("vae",), 0.085e9, 0.005e9, f"{BLOG}: 0.17 GB"),
    (
        "black-forest-labs/FLUX.1-schnell",
        ("transformer",),
        12e9,
        1e9,
        "https://huggingface.co/black-forest-labs/FLUX.1-schnell (model card: "
        "'a 12 billion parameter rectified flow transformer')",
    ),
    (
        "stabilityai/stable-diffusion-3-medium-diffusers",
        ("transformer",),
        2e9,
        1e9,
        "https://huggingface.co/stabilityai/stable-diffusion-3-medium (model card: 2 billion "
        "parameter MMDiT)",
    ),
    (
        "stabilityai/stable-diffusion-3.5-large",
        ("transformer",),
        8.1e9,
        0.1e9,
        "https://stability.ai/news/introducing-stable-diffusion-3-5 (Large: 8.1 billion "
        "parameters)",
    ),
    ("stabilityai/stable-diffusion-xl-base-1.0", ("unet",), 2.6e9, 0.1e9, SDXL),
    (
        "stabilityai/stable-diffusion-xl-base-1.0",
        ("text_encoder", "text_encoder_2"),
        817e6,
        1e6,
        SDXL,
    ),
    ("Wan-AI/Wan2.1-T2V-14B-Diffusers", ("transformer",), 14e9, 1e9, f"{WAN}: 14B"),
    ("Wan-AI/Wan2.1-T2V-14B-Diffusers", ("vae",), 127e6, 1e6, f"{WAN}: Wan-VAE 127M"),
    (
        "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
        ("transformer",),
        14e9,
        1e9,
        "https://github.com/Wan-Video/Wan2.2 README: A14B, 14B active parameters per step "
        "(one expert)",
    ),
    ("fal/AuraFlow-v0.3", ("transformer",), 6.8e9, 0.1e9,
     "https://openlaboratory.ai/models/auraflow-v0_3: 'AuraFlow v0.3 is a 6.8 billion parameter, "
     "flow-based text-to-image generative model developed by fal.ai'"),
    ("lodestones/Chroma1-HD", ("transformer",), 8.9e9, 0.1e9,
     "https://github.com/Comfy-Org/ComfyUI/pull/7355: 'Chroma is a 8.9B parameter model based on "
     "FLUX.1-schnell'"),
    ("lodestones/Chroma1-HD", ("text_encoder",), 4.76e9, 0.005e9, f"{BLOG}: 9.52 GB ({T5})"),
    ("Lightricks/LTX-Video", ("transformer",), 2e9, 1e9,
     "https://github.com/Lightricks/LTX-Video configs/ltxv-2b-0.9.yaml: checkpoint "
     "'ltx-video-2b-v0.9.safetensors'"),
    ("Lightricks/LTX-Video", ("text_encoder",), 4.76e9, 0.005e9, f"{BLOG}: 9.52 GB ({T5})"),
    # The whole pipeline: diffusers-torchao measured 19.764 GiB of CUDA memory after loading
    # CogVideoX-5b in bf16 (2 bytes per parameter); "5B" alone is a name (5.57 B counted).
    ("THUDM/CogVideoX-5b", ("transformer", "text_encoder", "vae"), 19.764 * 2**30 / 2, 0.001e9,
     "https://github.com/sayakpaul/diffusers-torchao/blob/0803ee2b1b5a09641e2e7f5dabef575b1d0b6723/"
     "README.md (CogVideoX benchmarks: 5B, bf16, model_memory 19.764 GiB)"),
    ("THUDM/CogVideoX-5b", ("text_encoder",), 4.76e9, 0.005e9, f"{BLOG}: 9.52 GB ({T5})"),
    ("hunyuanvideo-community/HunyuanVideo", ("transformer",), 13e9, 1e9,
     "https://github.com/Tencent/HunyuanVideo/blob/fa14b001c18f37191c938a9ef6baad3b9b472759/"
     "README.md: 'a video generative model with over 13 billion parameters'"),
    ("hunyuanvideo-community/HunyuanVideo", ("text_encoder_2",), 123e6, 1e6,
     "https://github.com/CompVis/stable-diffusion README: 'its 860M UNet and 123M text encoder' "
     "(the same CLIP ViT-L/14 text encoder)"),
    ("black-forest-labs/FLUX.2-dev", ("transformer",), 32e9, 1e9,
     "https://huggingface.co/black-forest-labs/FLUX.2-dev (model card: 'a 32 billion parameter "
     "rectified flow transformer')"),
    ("Qwen/Qwen-Image", ("transformer",), 20e9, 1e9,
     "https://huggingface.co/Qwen/Qwen-Image (model card: 'a 20B MMDiT image foundation model')"),
    ("Qwen/Qwen-Image", ("text_encoder",), 8e9, 1e9,
     "https://huggingface.co/collections/Qwen/qwen25-vl (Qwen/Qwen2.5-VL-7B-Instruct: 8B)"),
    ("Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers", ("transformer",), 1604e6, 1e6,
     "Xie et al., SANA, arXiv:2410.10629, Table 6: Sana-1.6B, 1604M parameters"),
    ("Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers", ("text_encoder",), 2_614_636_800,
     1, "Gemma Team, Gemma 2, arXiv:2408.00118, Table 2: 2B, 590,118,912 embedding + "
     "2,024,517,888 non-embedding parameters"),
    ("HiDream-ai/HiDream-I1-Full", ("transformer",), 17e9, 1e9,
     "https://github.com/HiDream-ai/HiDream-I1/blob/101886b1ca29afed87978a0546d15ae28d25e695/"
     "README.md: 'a new open-source image generative foundation model with 17B parameters'"),
    ("HiDream-ai/HiDream-I1-Full", ("text_encoder_4",), 8e9, 1e9,
     "https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct (Llama 3.1 model card: 8B)"),
]  # fmt: skip


def _params(repo_id: str) -> dict[str, int]:
    folder = shipped()[repo_id]
    result = estimate(qconf.validate({"model": {"source": str(folder)}}))
    return {name: part.params for name, part in result.parts.items()}


@pytest.mark.parametrize(
    "repo_id,parts,published,unit,citation",
    PUBLISHED,
    ids=[f"{r}:{'+'.join(p)}" for r, p, *_ in PUBLISHED],
)
def test_parameter_counts_match_published_figures(
    repo_id: str, parts: tuple[str, ...], published: float, unit: float, citation: str
) -> None:
    counted = sum(_params(repo_id)[part] for part in parts)
    tolerance = max(0.01 * published, unit / 2)
    assert abs(counted - published) <= tolerance, (
        f"{repo_id} {parts}: {counted / 1e9:.4f} B counted vs {published / 1e9} B published "
        f"({citation})"
    )


def test_every_snapshot_file_names_its_source() -> None:
    files = sorted(snapshots_root().glob("*/**/*.json"))
    assert files, "no snapshots shipped"
    for file in files:
        source = json.loads(file.read_text()).get("_qconf_source", "")
        assert source.startswith("https://"), f"{file}: no _qconf_source"


def test_snapshots_ship_in_the_wheel() -> None:
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    for glob in ('"snapshots/*/*.json"', '"snapshots/*/*/*.json"'):
        assert glob in pyproject


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache: snapshots only


def test_estimate_preset_works_offline(offline: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["estimate", "--json", "preset=flux-nf4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["components"]["transformer"]["params"] == 11_901_408_320
    gib = out["total_bytes"] / 2**30
    assert 10.5 < gib < 10.7  # README: nf4 10.6 GiB with today's libraries
    # flux-nf4 quantizes the transformer and T5 with bitsandbytes (1.2 x while loading); the
    # VAE and CLIP load as stored.
    peaks = {
        name: math.ceil(part["bytes"] * (1.2 if name in ("transformer", "text_encoder_2") else 1))
        for name, part in out["components"].items()
    }
    assert out["load_peak_bytes"] == sum(peaks.values())


def test_readme_states_the_load_peak_ratios_the_estimate_uses() -> None:
    from qconf.backends.quanto import QuantoEntry
    from qconf.backends.torchao import (
        Float8WeightOnly,
        Int4WeightOnly,
        Int8DynamicActivationInt8Weight,
        Int8WeightOnly,
        IntxWeightOnly,
    )

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in readme.splitlines()
            if line.startswith("| ") and "×" in line}  # fmt: skip
    assert f"int8wo, int8dq {Int8WeightOnly.load_peak_ratio}×" in rows["torchao"]
    assert Int8DynamicActivationInt8Weight.load_peak_ratio == Int8WeightOnly.load_peak_ratio
    assert f"float8wo {Float8WeightOnly.load_peak_ratio}×" in rows["torchao"]
    assert IntxWeightOnly.load_peak_ratio == Int4WeightOnly.load_peak_ratio
    assert f"int4 (intx, and CUDA-only types) {IntxWeightOnly.load_peak_ratio}×" in rows["torchao"]
    for key in ("bitsandbytes_4bit", "bitsandbytes_8bit"):
        assert f"| {REGISTRY[key].load_peak_ratio}× |" in rows["bitsandbytes"]
    assert f"| {REGISTRY['gguf'].load_peak_ratio}× (" in rows["gguf"]
    ratio = {w: QuantoEntry(backend="quanto", kwargs={"weights_dtype": w}).load_peak_ratio()
             for w in ("int8", "float8", "int4", "int2")}  # fmt: skip
    assert ratio["int4"] == ratio["int2"]
    assert (f"int8 {ratio['int8']}×; float8 {ratio['float8']}×; int4, int2 {ratio['int4']}×"
            in rows["quanto"])  # fmt: skip


def test_a_quanto_int8_plan_never_peaks_above_its_unquantized_load(estimates: list) -> None:
    for e in estimates:
        if e.bytes is not None and "quanto-int8" in e.preset:
            assert e.load_peak_bytes < e.bytes_unquantized, e


def test_estimate_without_snapshot_says_what_is_missing(
    offline: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli_main(["estimate", "model.source=someone/no-such-model", "model.pipeline=FluxPipeline"])
        == 2
    )
    err = capsys.readouterr().err
    assert "someone/no-such-model" in err and "HF_HUB_OFFLINE" in err
    for file in ("model_index.json", "transformer/config.json", "text_encoder_2/config.json"):
        assert file in err, err


def test_parse_size() -> None:
    assert parse_size("16GiB") == parse_size("16G") == parse_size("16") == 16 * 2**30
    assert parse_size("16GB") == 16 * 10**9
    assert parse_size("12000 MiB") == 12000 * 2**20
    with pytest.raises(ValueError):
        parse_size("sixteen")


@pytest.fixture(scope="module")
def estimates() -> list:
    return estimate_presets()


def test_fits_agrees_with_the_estimates(
    estimates: list, capsys: pytest.CaptureFixture[str]
) -> None:
    budget = 16 * 2**30
    assert cli_main(["list", "presets", "--fits", "16GiB", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    listed = [(row["preset"], row["load_peak_bytes"]) for row in out["fits"]]
    expected = [(e.preset, e.load_peak_bytes) for e in fitting(estimates, budget)]
    assert listed == expected and listed, listed
    assert [b for _, b in listed] == sorted(b for _, b in listed)  # smallest peak first
    assert all(b <= budget for _, b in listed)  # the load fits, not only the weights
    assert {"flux-nf4", "sdxl-int8wo", "sd35-nf4"} <= {p for p, _ in listed}
    assert "flux-int8wo" not in {p for p, _ in listed}  # 16.1 GiB
    unknown = {row["preset"] for row in out["not_estimated"]}
    assert unknown == {e.preset for e in estimates if e.bytes is None}


def test_every_built_in_preset_is_estimated_offline(estimates: list) -> None:
    missing = [(e.preset, e.source) for e in estimates if e.bytes is None]
    assert not missing, missing
    assert {e.source for e in estimates} <= set(shipped())


def test_stand_in_parts_are_said_in_the_estimate(
    offline: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A snapshot part whose exact config is not public carries `_qconf_stand_in`; the
    estimate says so for that part, and only for it."""
    stand_ins = {
        (file.parent.parent.name, file.parent.name)
        for file in snapshots_root().glob("*/*/config.json")
        if "_qconf_stand_in" in json.loads(file.read_text())
    }
    assert stand_ins == {
        ("HiDream-ai--HiDream-I1-Full", "text_encoder"),
        ("HiDream-ai--HiDream-I1-Full", "text_encoder_2"),
    }
    assert cli_main(["estimate", "preset=hidream-nf4"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "approximate" in line]
    assert [line.split(":")[1].strip() for line in notes] == ["text_encoder", "text_encoder_2"]


def test_a_broken_user_preset_is_listed_as_not_estimated_with_its_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preset = tmp_path / "preset"
    preset.mkdir()
    (preset / "my-bad.yaml").write_text(
        "# @package _global_\nquant:\n  mapping:\n    unet:\n      backend: hqq\n"
    )
    args = ["list", "presets", "--fits", "16GiB", "--json", "--config-dir", str(tmp_path)]
    assert cli_main(args) == 0
    out = json.loads(capsys.readouterr().out)
    (bad,) = [row for row in out["not_estimated"] if row["preset"] == "my-bad"]
    assert "unknown backend 'hqq'" in bad["missing"]
    assert "flux-nf4" in {row["preset"] for row in out["fits"]}


def test_stand_in_notes_come_only_from_shipped_snapshots(
    tmp_path: Path, offline: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user's folder cannot make the estimate print qconf's 'approximate:' notes."""
    import shutil

    copy = tmp_path / "hidream"
    shutil.copytree(shipped()["HiDream-ai/HiDream-I1-Full"], copy)
    assert cli_main(["estimate", "--folder", str(copy), "preset=hidream-nf4"]) == 0
    assert "approximate" not in capsys.readouterr().err
