"""Skip entries say what they really leave unquantized, for every backend and library, checked
through the real load of the part (no mocks): the layers a proposed `skip:` list keeps
unquantized and the bytes that costs are exactly what the loaded part shows. quanto in
diffusers matches leaf names only, so its entries keep every namesake, and the count says so."""

from __future__ import annotations

import pytest

import qconf
from qconf.sensitivity import layers as L
from qconf.sensitivity.ranking import LayerRanking, skip_keeps

FLUX = ["model=tiny-flux", "run.steps=1"]
CASES = [  # (part, option, library + backend it exercises)
    ("transformer", "int8wo"),  # diffusers + torchao: substring or exact parameter name
    ("transformer", "quanto-int8"),  # diffusers + quanto: leaf names only
    ("text_encoder_2", "int8wo"),  # transformers + torchao
    ("text_encoder_2", "quanto-int8"),  # transformers + quanto
    ("text_encoder_2", "bnb-int8"),  # transformers + bitsandbytes 8-bit
    ("text_encoder", "nf4"),  # transformers + bitsandbytes 4-bit
    pytest.param("transformer", "nf4", marks=pytest.mark.gpu),  # diffusers + bnb: GPU only
]
# Layers whose names exercise each matching rule: a namesake in other blocks (proj_out), a
# shared leaf under different parents (norm_out.linear), a unique one (x_embedder).
PREFERRED = ("proj_out", "norm_out.linear", "x_embedder")


def ranking_of(errors: dict[str, L.LayerError], part: str, option: str) -> LayerRanking:
    ranking = LayerRanking(part, option)
    for name, e in errors.items():
        ranking.layers[name] = {"weight_error": e.rel_error, "linearized": 0.0,
                                "measured": None, "skip_name": e.skip_name,
                                "bytes_saved": e.bytes_unquantized - e.bytes_quantized,
                                "also_skips": list(e.also_skips)}  # fmt: skip
    return ranking


def part_bytes(module: object) -> int:
    return sum(L._bytes(m) for _, m in module.named_modules())  # type: ignore[attr-defined]


@pytest.mark.parametrize(("part", "option"), CASES)
def test_a_skip_list_keeps_exactly_what_it_says(part: str, option: str) -> None:
    if option in ("nf4", "bnb-int8"):
        pytest.importorskip("bitsandbytes")
    if option.startswith("quanto"):
        pytest.importorskip("optimum.quanto")
    base = FLUX if part != "transformer" or option != "nf4" else [*FLUX, "model.device_map=cuda"]
    errors = L.weight_errors(base, part, option)  # every layer the option quantizes
    names = sorted(errors)
    chosen = [n for n in PREFERRED if n in errors] or [names[0], names[len(names) // 2]]
    scores = {n: float(len(chosen) - i) for i, n in enumerate(chosen)}
    entries = L.propose_skip(errors, len(chosen), scores)
    kept, extra = skip_keeps(ranking_of(errors, part, option), entries)

    full = qconf.load_part(L.part_cfg(base, part, option), part)
    skipping = qconf.load_part(L.part_cfg(base, part, L.with_skip(option, entries)), part)
    really = set(errors) - set(L.quantized_linears(skipping))
    assert set(chosen) <= really  # the layers asked for
    assert really == set(kept)  # and exactly those the report names, namesakes included
    assert part_bytes(skipping) - part_bytes(full) == extra > 0
    if option == "quanto-int8" and part == "transformer":
        assert len(kept) > len(entries)  # leaf names: "proj_out" keeps every block's proj_out
    if option == "int8wo":
        assert len(kept) == len(entries)  # a full name matches only itself
