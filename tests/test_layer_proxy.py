"""Layer-level sensitivity on the tiny pipelines, loaded and run for real (no mocks): the
weight proxy, the one-layer measured deviation and its linearized estimate, and skip entries
that leave exactly the chosen layers unquantized when the plan is loaded."""

from __future__ import annotations

import math

import pytest

import qconf
from qconf.sensitivity import layers as L

pytest.importorskip("torchao")

FLUX = ["model=tiny-flux", "run.steps=1"]
# float32: in bfloat16 swapping any layer moves the output by ~0.2 % through rounding alone,
# which hides int8's per-layer differences (the bench prints both dtypes)
WAN = ["model=tiny-wan", "run.steps=1", "model.torch_dtype=float32"]


@pytest.fixture(scope="module")
def flux_int8() -> dict[str, L.LayerError]:
    return L.weight_errors(FLUX, "transformer", "int8wo")


def unquantized(base: list[str], part: str, option: L.Option) -> set[str]:
    module = qconf.load_part(L.part_cfg(base, part, option), part)
    linears = {n for n, m in module.named_modules() if type(m).__name__.endswith("Linear")}
    return linears - set(L.quantized_linears(module))


def test_weight_proxy_is_positive_and_skipped_layers_are_absent(
    flux_int8: dict[str, L.LayerError],
) -> None:
    skipping = L.weight_errors(FLUX, "transformer", L.with_skip("int8wo", ["proj_out.weight"]))
    assert set(flux_int8) - set(skipping) == {"proj_out"}  # not the single blocks' proj_out
    for error in skipping.values():
        assert 0 < error.rel_error < 0.02
        assert error.bytes_quantized < error.bytes_unquantized


def test_int4_errs_more_than_int8_on_the_same_layers(
    flux_int8: dict[str, L.LayerError],
) -> None:
    int4 = L.weight_errors(FLUX, "transformer", "int4wo")
    assert set(int4) == set(flux_int8)
    assert all(int4[n].rel_error > 5 * flux_int8[n].rel_error for n in int4)
    pytest.importorskip("bitsandbytes")  # CPU: transformers parts only
    nf4 = L.weight_errors(FLUX, "text_encoder", "nf4")
    int8 = L.weight_errors(FLUX, "text_encoder", "bnb-int8")
    assert set(nf4) == set(int8) and all(nf4[n].rel_error > int8[n].rel_error for n in nf4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linearized_deviation_ranks_layers_like_measurement(seed: int) -> None:
    captured = L.capture_part([*WAN, f"run.seed={seed}"], "transformer")
    measured = L.measured_layer_deviation(WAN, "transformer", "int4wo", captured=captured)
    linear = L.linearized_deviation(WAN, "transformer", "int4wo", captured=captured)
    assert set(measured) == set(linear) and len(measured) == 14
    assert L.spearman(linear, measured) > 0.9  # measured 0.97-0.99 over seeds 0-2
    assert max(measured, key=measured.get) == max(linear, key=linear.get) == "proj_out"
    assert L.quantized_linears(captured.module) == []  # every swapped layer was put back


def test_proposed_skip_entries_leave_exactly_those_layers_unquantized(
    flux_int8: dict[str, L.LayerError],
) -> None:
    # torchao in diffusers matches substrings: "proj_out" would also hit the single blocks'
    scores = {"transformer_blocks.0.attn.to_q": 3.0, "proj_out": 2.0, "x_embedder": 1.0}
    names = L.propose_skip(flux_int8, 3, scores)
    assert names == ["transformer_blocks.0.attn.to_q.weight", "proj_out.weight", "x_embedder"]
    before = unquantized(FLUX, "transformer", "int8wo")
    after = unquantized(FLUX, "transformer", L.with_skip("int8wo", names))
    assert after - before == set(scores)
    by_proxy = L.propose_skip(flux_int8, 4)
    top = sorted(flux_int8, key=lambda n: -flux_int8[n].rel_error)[:4]
    after = unquantized(FLUX, "transformer", L.with_skip("int8wo", by_proxy))
    assert after - before == set(top)


def test_quanto_skip_entries_are_leaf_names_covering_every_namesake() -> None:
    pytest.importorskip("optimum.quanto")
    errors = L.weight_errors(FLUX, "transformer", "quanto-int8")
    names = L.propose_skip(errors, 1, {"transformer_blocks.0.attn.to_q": 1.0})
    assert names == ["to_q"]
    expected = {
        "transformer_blocks.0.attn.to_q",
        *errors["transformer_blocks.0.attn.to_q"].also_skips,
    }
    assert {n.rsplit(".", 1)[-1] for n in expected} == {"to_q"} and len(expected) > 1
    after = unquantized(FLUX, "transformer", L.with_skip("quanto-int8", names))
    assert after - unquantized(FLUX, "transformer", "quanto-int8") == expected


def test_text_encoder_skip_entries_and_the_largest_part() -> None:
    errors = L.weight_errors(FLUX, "text_encoder", "int8wo")  # transformers + torchao
    names = L.propose_skip(errors, 2)
    assert all(errors[n].skip_name == n and not errors[n].also_skips for n in names)
    after = unquantized(FLUX, "text_encoder", L.with_skip("int8wo", names))
    assert after - unquantized(FLUX, "text_encoder", "int8wo") == set(names)
    assert L.largest_part(qconf.validate(qconf.compose(FLUX))) == "transformer"  # not the VAE


def test_spearman_over_common_keys() -> None:
    x = {"a": 1.0, "b": 2.0, "c": 3.0, "only_x": 9.0}
    assert L.spearman(x, {"a": 10.0, "b": 20.0, "c": 30.0}) == pytest.approx(1.0, abs=1e-5)
    assert L.spearman(x, {"a": 3.0, "b": 2.0, "c": 1.0}) == pytest.approx(-1.0, abs=1e-5)
    assert math.isnan(L.spearman(x, {"a": 1.0}))
