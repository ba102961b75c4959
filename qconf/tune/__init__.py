"""`tune`: choose per-part options for a memory budget from measured sensitivity, then measure.

1. Sensitivity per (part, option) from qconf.sensitivity (cached).
2. Exact search over the part-level choices (each part: unquantized or one option that ran):
   estimated bytes must fit the budget; combinations are ranked by the sum of the parts'
   measured image errors (MSE of the end image, each part quantized alone). That sum only
   orders what to measure: it is no forecast of the combined image (on the tiny pipelines it
   read 2-4 dB below the measured PSNR, and in another order), so no table shows it.
3. The best few of that order, and every built-in preset of the model's family that fits and
   keeps to the options, parts and training asked for, are loaded and run for real; the
   candidate with the highest measured PSNR against the unquantized pipeline wins (fewer bytes
   break ties), so the result is never worse than such a preset. Measurements are cached like
   the sensitivity cells.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from qconf.errors import PlanError, Problem, QconfError
from qconf.sensitivity import cache
from qconf.sensitivity.cache import Psnr, Similarity
from qconf.sensitivity.parts import Cell, Setting, measure_parts

KIND = "tune-v2"  # bump when the measurement or the entry's format changes
MAX_COMBINATIONS = 2_000_000
# Predictions whose own estimate is over the budget (cells that lied) skipped before giving up
# on filling --measure: each costs a compose and an estimate.
MAX_SKIPPED = 16


@dataclass
class Scores:
    """A candidate's measured images (cached; the annotations bound what an entry may hold)."""

    psnr: Psnr  # inf: identical images
    ssim: Similarity


@dataclass
class Candidate:
    label: str  # "tuned #1" or "preset flux-int8wo"
    mapping: dict[str, str]  # part -> option name (unquantized parts left out)
    overrides: list[str]  # the whole plan: the user's overrides and what selects it
    bytes: int  # estimated weights of the whole pipeline
    order_mse: float | None = None  # the search's summed part errors: an order, not a forecast
    psnr: float | None = None  # measured: mean over images, against the unquantized pipeline
    ssim: float | None = None
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Tuned:
    budget: int
    cells: list[Cell]
    candidates: list[Candidate]  # measured, best first

    @property
    def winner(self) -> Candidate:
        return self.candidates[0]


Choice = tuple[float, int, dict[str, str]]  # predicted mse, estimated bytes, part -> option


def search(cells: list[Cell], parts: list[str], unquantized: dict[str, int], budget: int,
           allowed: Callable[[Cell], bool] = lambda cell: True) -> list[Choice]:  # fmt: skip
    """Every part-level choice that fits, as (predicted mse, bytes, mapping), best first."""
    choices = []
    for part in parts:
        options = [(0.0, unquantized[part], None)]
        options += [(c.image_mse or 0.0, c.bytes, c.option) for c in cells
                    if c.part == part and c.ok and allowed(c)]  # fmt: skip
        choices.append(options)
    if math.prod(len(o) for o in choices) > MAX_COMBINATIONS:
        raise PlanError(Problem("tune", "too many combinations to search exactly",
                                "limit --options or --parts"))  # fmt: skip
    fitting = []
    for combo in itertools.product(*choices):
        size = sum(c[1] for c in combo)
        if size <= budget:
            mapping = {p: c[2] for p, c in zip(parts, combo, strict=True) if c[2] is not None}
            fitting.append((sum(c[0] for c in combo), size, mapping))
    fitting.sort(key=lambda item: (item[0], item[1], sorted(item[2].items())))
    return fitting


def smallest(cells: list[Cell], parts: list[str], unquantized: dict[str, int],
             allowed: Callable[[Cell], bool]) -> tuple[int, dict[str, str]]:  # fmt: skip
    """The smallest plan the options can make: each part at its smallest."""
    size, mapping = 0, {}
    for part in parts:
        best = min((c for c in cells if c.part == part and c.ok and allowed(c)),
                   key=lambda c: c.bytes, default=None)  # fmt: skip
        if best is not None and best.bytes < unquantized[part]:
            size += best.bytes
            mapping[part] = best.option
        else:
            size += unquantized[part]
    return size, mapping


def mapping_overrides(mapping: dict[str, str]) -> list[str]:
    return [f"quant.mapping.{part}={option}" for part, option in sorted(mapping.items())]


def tuned_overrides(where: Setting, mapping: dict[str, str]) -> list[str]:
    """The user's overrides, quantization cleared, then the chosen options."""
    from qconf.sensitivity.parts import CLEAR_QUANT

    return [*where.overrides, *CLEAR_QUANT, *mapping_overrides(mapping)]


def measure(where: Setting, candidates: list[Candidate],
            progress: Callable[[int, int, str], None] | None = None) -> None:  # fmt: skip
    """Load and run each candidate; PSNR/SSIM of its images against the unquantized ones."""

    todo = []
    for candidate in candidates:
        plan = where.plan_of(candidate.overrides)
        resolved = plan.resolve()
        entries = {p: (e.entry.model_dump(mode="json") if e else None)
                   for p, e in resolved.components.items()}  # fmt: skip
        name = cache.key(kind=KIND, model=where.fingerprint, entries=entries,
                         run=where.plan.run.model_dump(mode="json"),
                         dtype=where.plan.model.torch_dtype, versions=where.versions)  # fmt: skip
        hit = cache.read(KIND, name, Scores)
        if hit is not None:
            candidate.psnr, candidate.ssim, candidate.cached = hit.psnr, hit.ssim, True
        else:
            todo.append((candidate, plan, name))
    if not todo:
        return
    reference = _images(where, where.plan)
    for done, (candidate, plan, name) in enumerate(todo):
        if progress is not None:
            progress(done, len(todo), candidate.label)
        images = _images(where, plan, partial(_check_kept, candidate))
        candidate.psnr, candidate.ssim = _scores(images, reference)
        cache.write(KIND, name, {"psnr": candidate.psnr, "ssim": candidate.ssim}, Scores)
    if progress is not None:
        progress(len(todo), len(todo), "")


def _images(where: Setting, cfg: Any, check: Callable[[Any], None] | None = None) -> list[Any]:
    import gc

    import qconf
    from qconf.compare.metrics import generated_tensor
    from qconf.quiet import no_progress_bars
    from qconf.run.generate import generate
    from qconf.source.video import measuring_run

    no_progress_bars()
    with qconf.quiet():
        loaded = qconf.load(cfg)
    if check is not None:
        check(loaded.pipeline)
    loaded.pipeline.set_progress_bar_config(disable=True)
    images = [generated_tensor(g) for g in generate(loaded.pipeline, measuring_run(where.plan))]
    del loaded
    gc.collect()
    return images


def _check_kept(candidate: Candidate, pipeline: Any) -> None:
    """The layers a skip candidate really left unquantized, read from the loaded part: what
    its label and the preset say is what the load did (a note if the matching rules did not
    foresee it; the loaded truth replaces the forecast)."""
    from qconf.sensitivity.layers import quantized_linears

    for part, expected in candidate.extra.get("kept", {}).items():
        quantizable = set(candidate.extra["quantizable"][part])
        real = sorted(quantizable - set(quantized_linears(getattr(pipeline, part))))
        if real != expected:
            from qconf.text import safe

            print(f"note: tune: {safe(candidate.label)} left {len(real)} layers of {safe(part)} "
                  f"unquantized when loaded, not the {len(expected)} foreseen: "
                  f"{safe(', '.join(real))}", file=sys.stderr)  # fmt: skip
            candidate.extra["kept"][part] = real
            candidate.label = candidate.label.replace(f"+ {len(expected)} layers",
                                                      f"+ {len(real)} layers")  # fmt: skip


def _scores(images: list[Any], reference: list[Any]) -> tuple[float, float]:
    """Mean PSNR and SSIM over images, as `qconf compare` reports them."""
    from qconf.compare.metrics import deviation

    scores = [deviation(a, b) for a, b in zip(images, reference, strict=True)]
    psnrs = [p for p, _ in scores]
    psnr = math.inf if any(math.isinf(p) for p in psnrs) else sum(psnrs) / len(psnrs)
    return psnr, sum(s for _, s in scores) / len(scores)


def tune(where: Setting, budget: int, options: list[str], *, parts: list[str] | None = None,
         train: Sequence[str] | None = None, measured: int = 3, presets: list[str] | None = None,
         progress: Callable[[int, int, str], None] | None = None) -> Tuned:  # fmt: skip
    """The plan with the best measured image for `budget` bytes of weights (see the module).
    Only `options` on `parts` are tried, presets included; `train`: the parts that will be
    LoRA-trained ([]: every part the plan quantizes; None: no training) get only options LoRA
    trains through."""
    from qconf.estimate import estimate
    from qconf.sensitivity.parts import weight_bearing_parts

    all_parts = weight_bearing_parts(where.plan)
    tried = parts or all_parts
    cells = measure_parts(where, options, tried, progress=progress)
    allowed = _trainable_filter(where, train)
    if not any(c.ok and allowed(c) for c in cells):
        raise PlanError(_nothing_usable(cells, allowed))
    unquantized = {p: e.bytes for p, e in estimate(where.plan).parts.items()}
    # parts not tried stay unquantized (they still count against the budget)
    ranked = search(cells, all_parts, unquantized, budget, allowed)
    candidates = _predicted(where, ranked, budget, measured)
    if candidates:
        candidates += _with_skips(where, candidates[0], budget)
    scope = Scope(set(options), set(tried), train)
    candidates += _fitting_presets(where, budget, presets or [], scope)
    if not candidates:
        size, mapping = smallest(cells, all_parts, unquantized, allowed)
        from qconf.units import human_bytes

        plan_text = " ".join(mapping_overrides(mapping)) or "unquantized"
        raise PlanError(Problem(f"budget={human_bytes(budget)}",
                                f"no plan fits; the smallest is {human_bytes(size)} "
                                f"({plan_text})", "raise the budget"))  # fmt: skip
    measure(where, candidates, progress)
    candidates.sort(key=lambda c: (-(c.psnr if c.psnr is not None else -math.inf), c.bytes,
                                   c.label))  # fmt: skip
    return Tuned(budget, cells, candidates)


def _predicted(where: Setting, ranked: list[Choice], budget: int, count: int) -> list[Candidate]:
    """The `count` best predictions whose whole plan the estimator puts within the budget. The
    search adds up the cells' bytes (checked against the estimator when read from the cache);
    the plan's own estimate has the last word, so no cached entry can put a candidate over."""
    found: list[Candidate] = []
    for mse, _, mapping in ranked[: count + MAX_SKIPPED]:
        overrides = tuned_overrides(where, mapping)
        size = _estimated(where, overrides)
        if size > budget:
            _over_budget_notice(mapping, size, budget)
            continue
        label = f"tuned #{len(found) + 1}"
        found.append(Candidate(label, mapping, overrides, size, order_mse=mse))
        if len(found) == count:
            break
    return found


def _estimated(where: Setting, overrides: list[str]) -> int:
    """Estimated weights of the whole plan `overrides` make."""
    from qconf.estimate import estimate

    return estimate(where.plan_of(overrides)).total_bytes


def _over_budget_notice(mapping: dict[str, str], size: int, budget: int) -> None:
    from qconf.text import safe
    from qconf.units import human_bytes

    plan = " ".join(mapping_overrides(mapping)) or "unquantized"
    print(f"note: tune: {safe(plan)} is estimated {human_bytes(size)}, over "
          f"{human_bytes(budget)}; the cached measurements it was chosen by do not match this "
          "model — left out", file=sys.stderr)  # fmt: skip


def _with_skips(where: Setting, best: Candidate, budget: int) -> list[Candidate]:
    """The best prediction, with the largest part's most sensitive layers kept unquantized for
    the bytes the budget has left (layers ranked by qconf.sensitivity.ranking)."""
    from qconf.estimate import estimate
    from qconf.sensitivity.layers import largest_part
    from qconf.sensitivity.ranking import rank_layers, skip_keeps

    part = largest_part(where.plan)
    option = best.mapping.get(part)
    if option is None or best.bytes >= budget:
        return []
    ranking = rank_layers(where, part, option)
    left, names, covered = budget - best.bytes, [], set()
    for layer in ranking.order():
        info = ranking.layers[layer]
        if layer in covered or info["skip_name"] in names:
            continue
        cost = sum(ranking.layers[n]["bytes_saved"] for n in [layer, *info["also_skips"]]
                   if n not in covered and n in ranking.layers)  # fmt: skip
        if cost > left:
            break
        left -= cost
        names.append(info["skip_name"])
        covered.update([layer, *info["also_skips"]])
    while names:  # the estimator has the last word on bytes
        overrides = [*best.overrides, f"quant.mapping.{part}.skip={_hydra_list(names)}"]
        plan = where.plan_of(overrides)
        size = estimate(plan).total_bytes
        if size <= budget:
            kept, _ = skip_keeps(ranking, names)
            label = f"{best.label} + {len(kept)} layers of {part} kept"
            extra = {"skip": {part: names}, "kept": {part: kept},
                     "quantizable": {part: sorted(ranking.layers)}}  # fmt: skip
            return [Candidate(label, best.mapping, overrides, size, extra=extra)]
        names.pop()
    return []


def _hydra_list(names: list[str]) -> str:
    return "[" + ",".join(f"'{name}'" for name in names) + "]"


def _trainable_filter(where: Setting, train: Sequence[str] | None) -> Callable[[Cell], bool]:
    """Whether a cell may be used: with training, a part to be trained takes only options LoRA
    trains through (`train` [] : every part)."""
    if train is None:
        return lambda cell: True
    from qconf.loading.trainable import train_problems

    known: dict[tuple[str, str], bool] = {}

    def allowed(cell: Cell) -> bool:
        if train and cell.part not in train:
            return True
        if (cell.part, cell.option) not in known:
            plan = where.cfg(f"quant.mapping.{cell.part}={cell.option}")
            known[cell.part, cell.option] = not train_problems(plan.resolve(), [cell.part])
        return known[cell.part, cell.option]

    return allowed


def _nothing_usable(cells: list[Cell], allowed: Callable[[Cell], bool]) -> Problem:
    """One line: every option tried failed here, or none of those that ran can be trained."""
    ran = [c for c in cells if c.ok]
    if ran:
        pairs = ", ".join(f"{c.option} on {c.part}" for c in ran[:4])
        return Problem("--train", f"no option that ran can be trained through ({pairs})",
                       "add trainable options to --options (qconf list options, column 'LoRA "
                       "trains on'), or train other parts")  # fmt: skip
    failed = [c for c in cells if c.status == "failed"]
    first = failed[0] if failed else cells[0]
    return Problem("--options", f"nothing to choose from: every option tried failed here "
                   f"({first.option} on {first.part}: {first.reason})",
                   "pick other --options or --parts (qconf sensitivity shows why)")  # fmt: skip


@dataclass(frozen=True)
class Scope:
    """What the user allowed: presets outside it are no candidates."""

    options: set[str]
    parts: set[str]
    train: Sequence[str] | None  # as tune's `train`

    def outside(self, mapping: dict[str, str]) -> str | None:
        """Why a plan (part -> option name) is outside, or None."""
        for part, option in sorted(mapping.items()):
            if part not in self.parts:
                return f"quantizes {part}, not in --parts"
            if option not in self.options:
                return f"{option} on {part}, not in --options"
        return None


def _fitting_presets(where: Setting, budget: int, presets: list[str], scope: Scope
                     ) -> list[Candidate]:  # fmt: skip
    """Built-in presets of this model's family (same pipeline class) that keep to the scope,
    run here and fit. Those of the family left out for the scope are named in one note."""
    import qconf
    from qconf.estimate import estimate
    from qconf.plan.intake import intake

    found, outside = [], []
    family = where.plan.resolve().parts.pipeline
    for name in presets:
        try:
            # The preset's family: the pipeline class of the model it was written for.
            own = intake(overrides=[f"preset={name}"], config_dir=where.config_dir)  # no --plan
            if own.resolve().parts.pipeline != family:
                continue
            # The user's overrides after the preset: their model wins over the preset's.
            cfg = where.composed([f"preset={name}", *where.overrides])
            plan = intake(cfg, config_dir=where.config_dir)
            if plan.model != where.plan.model:
                continue
            mapping = _option_names(cfg, where)
            why = scope.outside(mapping)
            if why is not None:
                outside.append(f"{name} ({why})")
                continue
            qconf.check_environment(plan)
            if scope.train is not None:
                from qconf.loading.trainable import check_trainable

                check_trainable(plan.resolve(), list(scope.train) or None)
            size = estimate(plan).total_bytes
        except QconfError:
            continue
        if size <= budget:
            overrides = [f"preset={name}", *where.overrides]
            found.append(Candidate(f"preset {name}", mapping, overrides, size,
                                   extra={"preset": name, "entries": _entries(cfg)}))  # fmt: skip
    if outside:
        from qconf.text import safe

        print(f"note: tune: presets left out, outside what you asked for: "
              f"{safe('; '.join(outside))}", file=sys.stderr)  # fmt: skip
    return found


def _entries(cfg: Any) -> dict[str, Any]:
    """The plan's mapping as its files wrote it: part -> {backend, kwargs[, skip]}."""
    from omegaconf import OmegaConf

    mapping = OmegaConf.to_container(cfg.quant.mapping, resolve=True)
    return {p: e for p, e in mapping.items() if e is not None}  # type: ignore[union-attr]


def _option_names(cfg: Any, where: Setting) -> dict[str, str]:
    """part -> the backend option its entry is (`custom` for an entry no option file has)."""
    from qconf.plan.compose import user_config_dirs
    from qconf.plan.conftree import backend_options

    options = backend_options(user_config_dirs(where.config_dir))
    return {part: next((n for n, o in options.items() if o == entry), "custom")
            for part, entry in _entries(cfg).items()}  # fmt: skip
