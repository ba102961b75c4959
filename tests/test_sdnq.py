"""The traps of sdnq that the registry fields do not express (qconf/backends/sdnq.py lists them):
each is silent in the library, and each has a test here against real loads of tiny pipelines."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import qconf
import qconf.train
from qconf.loading.report import _layer_label

pytest.importorskip("sdnq")

# sdnq leaves layers under 16,384 weights alone; on the tiny pipelines that is most of them,
# so tests that need every layer quantized lower the floor (the default is tested as well).
NO_FLOOR = "{minimum_allowed_numel: 0, minimum_allowed_channel_size: 0}"


def _quantized(module: torch.nn.Module) -> list[str]:
    return [n for n, m in module.named_modules()
            if isinstance(m, torch.nn.Linear) and _layer_label(m, m.weight)]  # fmt: skip


def _run(code: str, tmp_path: Path, env: dict[str, str] | None = None) -> str:
    """`code` in a fresh interpreter (nothing imported yet), its stdout."""
    import os

    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SDNQ_")}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={**clean, **(env or {})}, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_saved_text_encoder_reloads_quantized_in_a_process_that_never_imported_sdnq(
    tmp_path: Path,
) -> None:
    """transformers only knows the sdnq method once sdnq is imported; without it the int8 codes
    load as weights and the model still runs. qconf imports it before every reload."""
    target = tmp_path / "saved"
    plan = [f"quant.mapping.text_encoder_2={{backend: sdnq, kwargs: {NO_FLOOR}}}"]
    original = qconf.load(qconf.compose(plan), save=target)
    out = _run(
        f"""
        import sys, torch, qconf
        assert "sdnq" not in sys.modules
        loaded = qconf.load(qconf.compose(["model.source={target}"]))
        te = loaded.pipeline.text_encoder_2
        kinds = {{type(m).__name__ for m in te.modules()}}
        print("SDNQLinear" in kinds, sorted({{str(p.dtype) for p in te.parameters()}}))
        image = loaded.pipeline("a cat", num_inference_steps=1, height=32, width=32,
                                output_type="pt", generator=torch.Generator().manual_seed(0))
        torch.save(image.images, "{tmp_path}/reloaded.pt")
        """,
        tmp_path,
    )
    assert out.startswith("True"), out
    expected = original.pipeline(
        "a cat", num_inference_steps=1, height=32, width=32, output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip
    assert torch.equal(torch.load(tmp_path / "reloaded.pt"), expected)


def test_reloaded_layers_match_the_saved_ones(tmp_path: Path) -> None:
    """Same layers, same codes. A diffusers part's float32 scales come back rounded through the
    load dtype: diffusers casts every floating tensor of a checkpoint to it (0.42.1,
    load_model_dict_into_meta). The day that changes this test fails: then drop the rounding."""
    target = tmp_path / "saved"
    overrides = [f"quant.mapping.transformer={{backend: sdnq, kwargs: {NO_FLOOR}}}",
                 f"quant.mapping.text_encoder_2={{backend: sdnq, kwargs: {NO_FLOOR}}}"]  # fmt: skip
    original = qconf.load(qconf.compose(overrides), save=target)
    reloaded = qconf.load(qconf.compose([f"model.source={target}"]))
    for part in ("transformer", "text_encoder_2"):
        first, second = getattr(original.pipeline, part), getattr(reloaded.pipeline, part)
        assert _quantized(first) == _quantized(second) and _quantized(first), part
        a, b = dict(first.named_parameters()), dict(second.named_parameters())
        assert a.keys() == b.keys()
        for name in a:
            expected = a[name]
            if part == "transformer" and name.endswith(".scale"):
                expected = expected.to(first.dtype).float()
            assert torch.equal(expected, b[name]), (part, name)
    assert reloaded.report.parts["transformer"].bytes == original.report.parts["transformer"].bytes


@pytest.mark.parametrize("weights", ["int8", "uint4"])
def test_the_estimate_of_a_saved_folder_is_its_reload(weights: str, tmp_path: Path) -> None:
    """A saved sdnq part is priced from its safetensors header as the reload allocates it."""
    from qconf.estimate import estimate

    entry = f"{{backend: sdnq, kwargs: {{weights_dtype: {weights}, use_svd: true, "
    entry += "minimum_allowed_numel: 0, minimum_allowed_channel_size: 0}}"
    parts = ("transformer", "text_encoder_2")
    target = tmp_path / "saved"
    qconf.load(qconf.compose([f"quant.mapping.{p}={entry}" for p in parts]), save=target)
    plan = qconf.validate(qconf.compose([f"model.source={target}"]))
    reloaded = qconf.load(plan).report.parts
    predicted = estimate(plan).parts
    for part in parts:
        assert predicted[part].bytes == reloaded[part].bytes, part
        assert predicted[part].quantized_layers == sum(reloaded[part].quantized_layers.values())
        assert predicted[part].params == reloaded[part].params, part


@pytest.mark.parametrize("kwarg", ["scale_dtype", "zero_point_dtype"])
def test_kwargs_that_do_not_survive_a_reload_are_refused_with_the_reason(kwarg: str) -> None:
    with pytest.raises(qconf.PlanError) as caught:
        qconf.validate(
            qconf.compose(
                [f"quant.mapping.transformer={{backend: sdnq, kwargs: {{{kwarg}: int8}}}}"]
            )
        )
    line = str(caught.value)
    assert f"quant.mapping.transformer.kwargs.{kwarg}" in line
    assert "not offered" in line and "reloaded" in line


def test_a_misspelt_kwarg_is_an_error_naming_the_right_one() -> None:
    with pytest.raises(qconf.PlanError) as caught:
        qconf.validate(
            qconf.compose(
                ["quant.mapping.transformer={backend: sdnq, kwargs: {weight_dtype: int8}}"]
            )
        )
    assert "did you mean 'weights_dtype'" in str(caught.value)


def test_svd_settings_without_svd_are_refused() -> None:
    with pytest.raises(qconf.PlanError, match="kwargs.svd_rank.*use_svd"):
        qconf.validate(
            qconf.compose(["quant.mapping.transformer={backend: sdnq, kwargs: {svd_rank: 16}}"])
        )


def test_the_size_floor_is_estimated_and_reported_per_layer() -> None:
    """sdnq's default floor (16,384 weights) leaves small layers alone: the estimate counts and
    says so, and lowering the floor quantizes exactly the layers the estimate then predicts."""
    from qconf.estimate import estimate

    for kwargs, floor_note in (("{}", True), (NO_FLOOR, False)):
        plan = qconf.validate(
            qconf.compose([f"quant.mapping.transformer={{backend: sdnq, kwargs: {kwargs}}}"])
        )
        predicted = estimate(plan).parts["transformer"]
        assert any("fewer than 16384 weights" in n for n in predicted.notes) is floor_note
        loaded = qconf.load_part(qconf.compose([f"quant.mapping.transformer={{backend: sdnq, "
                                                f"kwargs: {kwargs}}}"]), "transformer")  # fmt: skip
        assert len(_quantized(loaded)) == predicted.quantized_layers > 0


def test_lora_gets_a_gradient_on_every_adapter_matrix(qconf_cache: Path) -> None:
    """sdnq's quantized forward runs under no_grad unless told otherwise: adapters before a
    quantized layer would get no gradient, silently."""
    cfg = qconf.compose([f"quant.mapping.transformer={{backend: sdnq, kwargs: {NO_FLOOR}}}"])
    module = qconf.load_part(cfg, "transformer", train=True)
    assert len(_quantized(module)) >= 19
    qconf.train.add_lora(module, rank=4)
    params = qconf.train.lora_parameters(module)
    with torch.no_grad():  # lora_B starts at zero, and then lora_A gets no gradient
        for p in params:
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    config = module.config
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 16, config.in_channels, generator=generator, dtype=module.dtype)
    text = torch.randn(1, 8, config.joint_attention_dim, generator=generator, dtype=module.dtype)
    pooled = torch.randn(1, config.pooled_projection_dim, generator=generator, dtype=module.dtype)
    out = module(hidden_states=hidden, encoder_hidden_states=text, pooled_projections=pooled,
                 timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
                 img_ids=torch.zeros(16, 3),
                 txt_ids=torch.zeros(8, 3), return_dict=False)[0]  # fmt: skip
    out.float().pow(2).mean().backward()
    missing = [i for i, p in enumerate(params) if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"{len(missing)} of {len(params)} adapter matrices got no gradient"


def test_training_is_refused_when_sdnq_was_imported_with_its_no_grad_forward(
    tmp_path: Path,
) -> None:
    out = _run(
        """
        import os
        os.environ["SDNQ_INFERENCE_CONTEXT"] = "no_grad"
        os.environ["SDNQ_USE_TORCH_COMPILE"] = "0"
        import sdnq, qconf
        cfg = qconf.compose(["quant.mapping.transformer=sdnq-int8"])
        qconf.load_part(cfg, "transformer")  # inference is fine
        try:
            qconf.load_part(cfg, "transformer", train=True)
        except qconf.PlanError as exc:
            print("refused:", exc)
        """,
        tmp_path,
    )
    assert "refused:" in out and "SDNQ_INFERENCE_CONTEXT=enable_grad" in out


def test_qconf_turns_torch_compile_off_on_cpu_unless_the_user_chose(tmp_path: Path) -> None:
    code = """
        import qconf
        qconf.load_part(qconf.compose(["quant.mapping.transformer=sdnq-int8"]), "transformer")
        import sdnq.common
        print(sdnq.common.use_torch_compile)
        """
    assert _run(code, tmp_path).strip() == "False"
    # a user's own setting is kept (not run: compiling costs the 12-18 s this avoids)
    env = _run(
        """
        import qconf.backends.sdnq as s, os
        s.import_sdnq()
        print(os.environ["SDNQ_USE_TORCH_COMPILE"], os.environ["SDNQ_INFERENCE_CONTEXT"])
        """,
        tmp_path,
        {"SDNQ_USE_TORCH_COMPILE": "1", "SDNQ_INFERENCE_CONTEXT": "no_grad"},
    )
    assert env.split() == ["1", "no_grad"]


def test_two_loads_of_an_svd_plan_give_the_same_weights() -> None:
    """SVDQuant starts from a randomized SVD: qconf fixes its seed while loading, and leaves the
    caller's random state as it was."""
    cfg = qconf.compose(["quant.mapping.transformer=sdnq-uint4-svd"])
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = dict(qconf.load_part(cfg, "transformer").named_parameters())
    assert torch.equal(torch.random.get_rng_state(), state)
    second = dict(qconf.load_part(cfg, "transformer").named_parameters())
    assert any(n.endswith("svd_up") for n in first)
    assert all(torch.equal(first[n], second[n]) for n in first)


def test_qconf_copies_of_sdnq_defaults_are_sdnq_s_own() -> None:
    """The defaults qconf compares plans and saved folders against (canonical form, refused
    saved settings) are sdnq.SDNQConfig's."""
    import inspect

    import sdnq

    from qconf.backends.sdnq import _DEFAULTS, _SAVED_DEFAULTS, _WITHHELD

    signature = inspect.signature(sdnq.SDNQConfig.__init__).parameters
    for name, value in {**_DEFAULTS, **_SAVED_DEFAULTS}.items():
        assert signature[name].default == value, name
    assert set(_SAVED_DEFAULTS) <= set(_WITHHELD)


def test_an_svd_rank_above_a_layer_s_size_is_estimated_as_sdnq_clamps_it() -> None:
    """torch.svd_lowrank gives min(rows, cols) components for a larger rank."""
    from qconf.estimate import estimate

    entry = "{backend: sdnq, kwargs: {weights_dtype: uint4, use_svd: true, svd_rank: 100}}"
    plan = qconf.validate(qconf.compose([f"quant.mapping.transformer={entry}"]))
    loaded = qconf.load(plan).report.parts["transformer"]
    assert estimate(plan).parts["transformer"].bytes == loaded.bytes


@pytest.mark.parametrize(("key", "value"), [("use_hadamard", True), ("use_codebook", True),
                                            ("scale_dtype", "int8")])  # fmt: skip
def test_a_saved_folder_with_a_setting_qconf_does_not_model_is_refused(
    key: str, value: object, tmp_path: Path
) -> None:
    """sdnq would read the setting itself and compute wrong (hadamard) or crash (codebook)."""
    import json

    target = tmp_path / "saved"
    qconf.load(qconf.compose(["quant.mapping.transformer=sdnq-uint4"]), save=target)
    config_file = target / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    config["quantization_config"][key] = value
    config_file.write_text(json.dumps(config))
    with pytest.raises(qconf.PlanError, match=f"{key}: not offered"):
        qconf.validate(qconf.compose([f"model.source={target}"]))


def test_the_report_names_the_code_type() -> None:
    loaded = qconf.load(qconf.compose(["quant.mapping.transformer=sdnq-uint4"]))
    assert set(loaded.report.parts["transformer"].quantized_layers) == {"SDNQLinear[uint4]"}
