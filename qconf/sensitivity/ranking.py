"""Layer ranking of the largest part under one option, for `qconf sensitivity` and `qconf tune`:
both proxies (weight error, no forward pass; linearized output deviation, one forward and a few
backward passes), checked against the measured one-layer deviation on a spread of layers
(Spearman), and the skip entries that keep the top layers unquantized. Cached like the cells."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

from pydantic import Field
from typing_extensions import TypedDict  # pydantic validates it on Python < 3.12 too

from qconf.sensitivity import cache
from qconf.sensitivity.cache import (
    MAX_LAYERS,
    MAX_RANKING_BYTES,
    ByteDelta,
    LayerName,
    Name,
    NonNegative,
    Similarity,
)

KIND = "layers-v2"  # bump when the ranking or the entry's format changes
PROBES = 16

# The annotations bound what a cached ranking may hold (see cache.py): finite values, names
# that are module paths (skip names become Hydra override values), at most MAX_LAYERS layers.


class LayerInfo(TypedDict):
    weight_error: NonNegative
    linearized: NonNegative
    measured: NonNegative | None  # None: not among the checked layers
    bytes_saved: ByteDelta
    skip_name: LayerName
    also_skips: Annotated[list[LayerName], Field(max_length=MAX_LAYERS)]


@dataclass
class LayerRanking:
    part: Name
    option: Name
    layers: Annotated[dict[LayerName, LayerInfo], Field(max_length=MAX_LAYERS)] = field(
        default_factory=dict
    )
    spearman_weight: Similarity | None = None  # weight proxy vs measured, on checked layers
    spearman_linearized: Similarity | None = None
    cached: bool = False

    def order(self) -> list[str]:
        """Layers, most sensitive first (linearized deviation; name breaks ties)."""
        return sorted(self.layers, key=lambda n: (-self.layers[n]["linearized"], n))

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "cached"}


def rank_layers(where: Any, part: str, option: str, check: int = 8) -> LayerRanking:
    """The ranking (from the cache when there); `check` layers, spread over the ranking, are
    also measured one at a time to report how well each proxy ranks them."""
    import qconf
    from qconf.sensitivity import layers as lx

    plan = where.cfg(f"quant.mapping.{part}={option}")
    entry = plan.resolve().components[part].entry.model_dump(mode="json")
    name = cache.key(kind=KIND, model=where.fingerprint, part=part, entry=entry, probes=PROBES,
                     check=check, run=where.plan.run.model_dump(mode="json"),
                     dtype=where.plan.model.torch_dtype, versions=where.versions)  # fmt: skip
    hit = cache.read(KIND, name, LayerRanking, MAX_RANKING_BYTES)
    if hit is not None and (hit.part, hit.option) == (part, option):
        hit.cached = True
        return hit
    if hit is not None:
        cache.notice(KIND, name, f"is for {hit.part} under {hit.option}, not {part} under {option}")
    base = where.cfg()
    with qconf.quiet():
        errors = lx.weight_errors(base, part, option)
        captured = lx.capture_part(base, part)
        linearized = lx.linearized_deviation(base, part, option, captured=captured,
                                             probes=PROBES)  # fmt: skip
        ordered = sorted(errors, key=lambda n: (-linearized.get(n, 0.0), n))
        checked = _spread(ordered, check)
        measured = lx.measured_layer_deviation(base, part, option, checked, captured=captured)
    ranking = LayerRanking(part, option)
    for layer, error in errors.items():
        ranking.layers[layer] = {
            "weight_error": error.rel_error,
            "linearized": linearized.get(layer, 0.0),
            "measured": measured.get(layer),
            "bytes_saved": error.bytes_unquantized - error.bytes_quantized,
            "skip_name": error.skip_name,
            "also_skips": list(error.also_skips),
        }
    weight = {n: errors[n].rel_error for n in measured}
    ranking.spearman_weight = _finite(lx.spearman(weight, measured))
    ranking.spearman_linearized = _finite(lx.spearman({n: linearized[n] for n in measured},
                                                      measured))  # fmt: skip
    cache.write(KIND, name, ranking.to_json(), LayerRanking)
    return ranking


def proposed_skip(ranking: LayerRanking, k: int) -> list[str]:
    """Skip entries for the k most sensitive layers (a shared entry counts once)."""
    from qconf.sensitivity.layers import LayerError, propose_skip

    errors = {n: LayerError(v["weight_error"], v["bytes_saved"], 0, v["skip_name"],
                            tuple(v["also_skips"])) for n, v in ranking.layers.items()}  # fmt: skip
    scores = {n: v["linearized"] for n, v in ranking.layers.items()}
    return propose_skip(errors, k, scores=scores)


def skip_keeps(ranking: LayerRanking, names: list[str]) -> tuple[list[str], int]:
    """What the skip entries `names` really leave unquantized in the ranked part: every layer
    an entry matches the way the library matches (quanto in diffusers compares leaf names, so
    `to_q` keeps every block's to_q), and the bytes that costs over the part fully quantized."""
    kept: set[str] = set()
    for layer, info in ranking.layers.items():
        if info["skip_name"] in names:
            kept.update([layer, *info["also_skips"]])
    kept &= set(ranking.layers)
    return sorted(kept), sum(ranking.layers[n]["bytes_saved"] for n in kept)


def _spread(ordered: list[str], count: int) -> list[str]:
    """`count` names evenly spread over the ranking, top and bottom included."""
    if len(ordered) <= count:
        return list(ordered)
    step = (len(ordered) - 1) / (count - 1)
    return list(dict.fromkeys(ordered[round(i * step)] for i in range(count)))


def _finite(value: float) -> float | None:
    import math

    return None if math.isnan(value) else value
