"""The preset library (conf/preset, conf/model) and the tiny pipelines that exercise it.

(a) every preset composes, validates (torch-free) and resolves, naming only real weight-bearing
    parts of its pipeline class in the installed diffusers, with the library that class says;
(b) for every family whose pipeline class has a built-in tiny pipeline, a CPU-runnable preset of
    that family really loads it: quantized parts hold torchao/quanto tensors, the rest stay plain,
    and the quantized pipeline still generates;
(c) bitsandbytes presets fail the CPU pre-flight with the diffusers part named;
(d) the README's preset table is `qconf.estimate.preset_table.markdown_table()`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

import qconf
from qconf.cli.main import main as cli_main
from qconf.estimate.preset_table import (
    END_MARKER,
    START_MARKER,
    markdown_table,
    readme_section,
    replace_section,
)
from qconf.plan.conftree import backend_options, conf_dir, group_options
from qconf.source.parts import TINY_PIPELINES
from qconf.source.table import load_table

PRESETS = sorted(group_options("preset"))
MODELS = group_options("model")
TABLE = load_table()
REPO = Path(__file__).resolve().parent.parent
BNB_BACKENDS = {"bitsandbytes_4bit", "bitsandbytes_8bit"}

# One CPU-runnable preset per family (model option) whose pipeline class has a tiny pipeline,
# plus a few more backends where a family's advice matters (SD3 keeps CLIP-G, quanto on CLIP).
TINY_LOADS = [
    ("flux-int8wo", "tiny-flux"),
    ("flux-quanto-int4", "tiny-flux"),
    ("flux-schnell-int8wo", "tiny-flux"),
    ("sd3-int8wo", "tiny-sd3"),
    ("sd3-quanto-int8", "tiny-sd3"),
    ("sd35-int8wo", "tiny-sd3"),
    ("sdxl-int8wo", "tiny-sdxl"),
    ("wan21-int8wo", "tiny-wan"),
    ("wan22-int8wo", "tiny-wan22"),
    ("ltx-int8wo", "tiny-ltx"),
]
VIDEO_FRAMES = {"tiny-wan": 5, "tiny-wan22": 5, "tiny-ltx": 9}  # 4k+1, the VAEs' time stride


@cache
def _plan(name: str, *overrides: str) -> qconf.Plan:
    """Composed and validated once per session (plans are not mutated by the tests)."""
    return qconf.validate(qconf.compose([f"preset={name}", *overrides]))


def _preset_yaml(name: str) -> tuple[str, dict[str, Any]]:
    text = group_options("preset")[name].read_text()
    return text, yaml.safe_load(text)


def _model_option(name: str) -> str:
    _, data = _preset_yaml(name)
    overrides = [e for e in data["defaults"] if isinstance(e, dict) and "override /model" in e]
    return overrides[0]["override /model"]


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU pre-flight is what these tests check: on a GPU machine, pretend there is none."""
    from qconf.loading import environment

    if environment.cuda_available():
        monkeypatch.setattr(environment, "cuda_available", lambda: False)


# --- (a) every preset: shape of the file, plan, parts -----------------------------------------


def test_library_covers_at_least_twelve_families() -> None:
    families = {_model_option(name) for name in PRESETS}
    assert len(families) >= 12, sorted(families)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_file_is_deltas_only(name: str) -> None:
    text, data = _preset_yaml(name)
    lines = text.splitlines()
    assert lines[0] == "# @package _global_"
    assert lines[1].startswith("# ") and len(lines[1]) > 20, "a comment saying why, with a source"
    assert set(data) <= {"defaults", "quant", "model"}, "only the mapping delta and the model"
    assert set(data.get("quant", {})) <= {"mapping"}
    # GPU-only torchao presets place the pipeline on the GPU (torchao quantizes where it loads).
    assert set(data.get("model", {})) <= {"device_map"}
    defaults = data["defaults"]
    # Backend options first, `override /model` last: Hydra wants overrides at the end.
    *backends, last = defaults
    assert list(last) == ["override /model"] and last["override /model"] in MODELS
    options = backend_options()
    for entry in backends:
        ((key, option),) = entry.items()
        assert re.fullmatch(r"/backend@quant\.mapping\.\w+", key), key
        assert option in options, f"{name}: unknown backend option {option}"
    # kwargs tweaks only touch parts the defaults list quantizes
    named = {next(iter(e)).rsplit(".", 1)[1] for e in backends}
    assert set(data.get("quant", {}).get("mapping", {})) <= named


@pytest.mark.parametrize("name", PRESETS)
def test_preset_validates_plan_only_on_the_command_line(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["validate", "--plan-only", f"preset={name}"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith("OK: ")


@pytest.mark.parametrize("name", PRESETS)
def test_preset_names_real_parts_of_its_pipeline(name: str) -> None:
    plan = _plan(name)
    resolved = plan.resolve()
    # A preset says everything: which model, which class, which dtype.
    assert plan.model.source not in TINY_PIPELINES
    assert plan.model.pipeline in TABLE and plan.model.torch_dtype is not None
    assert resolved.mode == "granular"
    parts = TABLE[plan.model.pipeline]
    assert resolved.quantized, "a preset quantizes something"
    for part in plan.quant.mapping:
        assert part in parts, f"{name}: {part} is not a part of {plan.model.pipeline}"
        assert parts[part]["weights"], f"{name}: {part} has no weights"
    for part, quantized in resolved.quantized.items():
        assert quantized.library == parts[part]["library"]
        # Quality advice that holds for every family: the VAE stays in high precision.
        assert not parts[part]["class"].startswith("Autoencoder"), f"{name} quantizes the VAE"


def test_sd3_presets_keep_clip_g_unquantized() -> None:
    sd3 = [n for n in PRESETS if _plan(n).model.pipeline == "StableDiffusion3Pipeline"]
    assert sd3
    for name in sd3:
        assert "text_encoder_2" not in _plan(name).resolve().quantized, name


def test_wan22_presets_quantize_both_experts() -> None:
    wan22 = [n for n in PRESETS if _model_option(n) == "wan22"]
    assert wan22
    for name in wan22:
        assert {"transformer", "transformer_2"} <= set(_plan(name).resolve().quantized), name


@pytest.mark.parametrize("option", sorted(MODELS))
def test_model_option(option: str) -> None:
    data = yaml.safe_load(MODELS[option].read_text())
    if option.startswith("tiny-"):
        assert data == {"source": option} and option in TINY_PIPELINES
    else:
        assert set(data) == {"source", "pipeline", "torch_dtype"}
        assert data["pipeline"] in TABLE and "/" in data["source"]


def test_every_tiny_pipeline_has_a_model_option() -> None:
    assert {name for name in MODELS if name.startswith("tiny-")} == set(TINY_PIPELINES)


# --- (b) tiny pipelines of the same class load through CPU-runnable presets --------------------


def test_every_family_with_a_tiny_pipeline_is_loaded() -> None:
    loaded = {_model_option(preset) for preset, _ in TINY_LOADS}
    tiny_classes = set(TINY_PIPELINES.values())
    for name in PRESETS:
        if _plan(name).model.pipeline in tiny_classes:
            assert _model_option(name) in loaded, f"no tiny load test for {name}'s family"


def _is_quantized(weight: Any) -> bool:
    from optimum.quanto import QTensor
    from torchao.utils import TorchAOBaseTensor

    return isinstance(weight, (TorchAOBaseTensor, QTensor))


def _linears(module: Any) -> dict[str, Any]:
    import torch
    from optimum.quanto import QModuleMixin

    return {
        name: sub
        for name, sub in module.named_modules()
        if isinstance(sub, (torch.nn.Linear, QModuleMixin))
    }


def _kept_by_library(module: Any, part: Any) -> set[str]:
    """Linears left in high precision on purpose (module names): by the plan's skip lists, or
    by the library itself (`_keep_in_fp32_modules`, transformers' output-layer rule)."""
    backend, library, kwargs = part.backend, part.library, part.kwargs
    kept = set(part.entry.skip or ())
    kept |= set(getattr(module, "_keep_in_fp32_modules", None) or ())
    kept |= set(kwargs.get("modules_to_not_convert") or ())
    kept |= set(kwargs.get("llm_int8_skip_modules") or ())
    if library == "transformers" and backend == "quanto":
        # transformers keeps the output layer (here CLIP's text_projection) unquantized
        from transformers.quantizers.base import get_keys_to_not_convert

        kept |= set(get_keys_to_not_convert(module))
    return kept


def _explained(qualified: str, kept: set[str]) -> bool:
    return any(f".{name}." in f".{qualified}." for name in kept)


@pytest.mark.parametrize(("preset", "tiny"), TINY_LOADS, ids=[p for p, _ in TINY_LOADS])
def test_tiny_pipeline_loads_through_preset(preset: str, tiny: str, qconf_cache: Path) -> None:
    import numpy as np
    import torch

    plan = _plan(preset, f"model={tiny}")
    qconf.check_environment(plan)  # CPU-runnable: nothing to refuse here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # library deprecation noise (quanto in diffusers, ...)
        loaded = qconf.load(plan)
    pipe = loaded.pipeline
    # A tiny pipeline of exactly the class the family's model option names.
    family_class = yaml.safe_load(MODELS[_model_option(preset)].read_text())["pipeline"]
    assert type(pipe).__name__ == family_class == TINY_PIPELINES[tiny]

    quantized = loaded.resolved.quantized
    modules = {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    assert set(quantized) <= set(modules), "every part the plan quantizes is in the pipeline"
    for name, module in modules.items():
        linears = _linears(module)
        if name in quantized:
            part = quantized[name]
            kept = _kept_by_library(module, part)
            plain = [n for n, m in linears.items() if not _is_quantized(m.weight)]
            assert len(plain) < len(linears), f"{name}: nothing quantized"
            unexplained = [n for n in plain if not _explained(n, kept)]
            assert not unexplained, f"{name}: left in high precision: {unexplained}"
        else:
            assert not any(_is_quantized(m.weight) for m in linears.values()), name

    # The quantized pipeline still runs (2 steps, 32x32; a few frames for video).
    kwargs: dict[str, Any] = {"num_frames": VIDEO_FRAMES[tiny]} if tiny in VIDEO_FRAMES else {}
    out = pipe(
        prompt="a photo of a cat wearing a tiny hat",
        num_inference_steps=2,
        height=32,
        width=32,
        generator=torch.manual_seed(0),
        output_type="np",
        **kwargs,
    )
    pixels = np.asarray(out.frames if tiny in VIDEO_FRAMES else out.images)
    assert pixels.shape[-3:] == (32, 32, 3) and np.isfinite(pixels).all()


# --- (c) bitsandbytes on diffusers parts: a clear CPU pre-flight error -------------------------

# Read from the YAML, not composed: collection stays fast.
BNB_PRESETS = [
    name
    for name in PRESETS
    if any(
        backend_options()[option]["backend"] in BNB_BACKENDS
        for entry in _preset_yaml(name)[1]["defaults"]
        for key, option in entry.items()
        if key.startswith("/backend@")
    )
]


def _bnb_diffusers_parts(plan: qconf.Plan) -> set[str]:
    return {
        name
        for name, part in plan.resolve().quantized.items()
        if part.backend in BNB_BACKENDS and part.library == "diffusers"
    }


@pytest.mark.parametrize("name", BNB_PRESETS)
def test_bnb_preset_fails_cpu_preflight_naming_the_part(name: str, no_gpu: None) -> None:
    plan = _plan(name)
    refused = _bnb_diffusers_parts(plan)
    assert refused, "every bnb preset here quantizes its denoiser with bnb"
    with pytest.raises(qconf.BackendUnavailableError) as info:
        qconf.check_environment(plan)
    # Exactly the diffusers parts: bnb on transformers parts (text encoders) runs on CPU.
    assert {p.where for p in info.value.problems} == {f"quant.mapping.{n}" for n in refused}
    for part in refused:
        assert f"'{part}'" in str(info.value) and "GPU" in str(info.value)


def test_bnb_validate_exits_2_on_cpu(no_gpu: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["validate", "preset=wan22-nf4"]) == 2
    err = capsys.readouterr().err
    for part in ("transformer", "transformer_2"):
        assert f"quant.mapping.{part}:" in err and "needs a CUDA GPU" in err
    assert "quant.mapping.text_encoder:" not in err  # UMT5 is a transformers part: fine on CPU
    assert cli_main(["validate", "--plan-only", "preset=wan22-nf4"]) == 0


# --- (d) the README table ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def table() -> str:
    return markdown_table()


def test_preset_table_is_torch_free() -> None:
    # Composing, validating and resolving a row is torch-free; only the memory column (the
    # estimate on the meta device) imports torch.
    code = (
        "import sys; from qconf.estimate.preset_table import preset_row; "
        "preset_row('flux-nf4', memory=False); "
        "heavy = {'torch', 'diffusers', 'transformers'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_preset_table_lists_every_preset(table: str) -> None:
    rows = table.splitlines()[2:]
    assert [re.match(r"\| `([^`]+)`", row).group(1) for row in rows] == PRESETS
    assert "| `sd3-nf4` | `stabilityai/stable-diffusion-3-medium-diffusers` |" in table
    assert "transformer: `nf4` (bnb_4bit_compute_dtype=float16)" in table


def test_preset_table_writes_between_the_markers(table: str) -> None:
    readme = f"# x\n\n{START_MARKER}\nold\n{END_MARKER}\n\nrest\n"
    written = replace_section(readme, table)
    assert readme_section(written) == table and written.endswith(f"{END_MARKER}\n\nrest\n")
    with pytest.raises(ValueError):
        replace_section("# no markers\n", table)


def test_readme_preset_table_is_current(table: str) -> None:
    readme = REPO / "README.md"
    section = readme_section(readme.read_text()) if readme.is_file() else None
    if section is None:
        pytest.skip(f"README.md has no {START_MARKER} ... {END_MARKER} section yet")
    assert section.strip() == table, (
        "README preset table is stale: run "
        "`python -m qconf.estimate.preset_table --write README.md`"
    )


def test_conf_tree_is_the_repo_one() -> None:
    # The presets tested here are the ones in this checkout, not an installed copy.
    assert conf_dir() == REPO / "conf"
