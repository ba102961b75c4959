"""Benchmark: is the sum of the parts' measured errors a forecast of a combined plan's image?

`qconf tune` ranks every per-part combination that fits the budget by the sum of the parts'
image MSEs (each part quantized alone, `qconf sensitivity`'s cells) and measures the best few.
Here every combination of the options on the chosen parts is loaded and run for real, and its
measured PSNR is printed beside the PSNR the summed MSEs would forecast, with the Spearman rank
correlation of the two (over the combinations) and the mean forecast error in dB. This is why
tune shows no "predicted PSNR" column: the sum orders what to measure and nothing more.

    python bench/bench_tune_order.py [--model tiny-flux] [--options int8wo int4wo quanto-int8]
                                     [--parts transformer text_encoder_2] [--steps 1]
"""

from __future__ import annotations

import argparse
import itertools
import math

from _common import console, silence_libraries
from rich.table import Table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny-flux")
    parser.add_argument("--options", nargs="+", default=["int8wo", "int4wo", "quanto-int4"])
    parser.add_argument("--parts", nargs="+", default=["transformer", "text_encoder_2"])
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()
    silence_libraries()

    from qconf.sensitivity.layers import spearman
    from qconf.sensitivity.parts import measure_parts, psnr_of, setting
    from qconf.tune import Candidate, measure, tuned_overrides

    where = setting([f"model={args.model}", f"run.steps={args.steps}"])
    cells = {(c.part, c.option): c for c in measure_parts(where, args.options, args.parts)}
    candidates = []
    for choice in itertools.product(*[[None, *args.options] for _ in args.parts]):
        mapping = {p: o for p, o in zip(args.parts, choice, strict=True) if o is not None}
        if len(mapping) < 2 or not all(cells[p, o].ok for p, o in mapping.items()):
            continue  # one part alone is a cell: its forecast is its measurement
        mse = sum(cells[p, o].image_mse or 0.0 for p, o in mapping.items())
        label = " ".join(f"{p}={o}" for p, o in sorted(mapping.items()))
        candidates.append(Candidate(label, mapping, tuned_overrides(where, mapping), 0, mse))
    measure(where, candidates)
    table = Table(title=f"{args.model}: summed part errors vs the measured combination")
    for column in ("plan", "forecast PSNR", "measured PSNR", "forecast - measured"):
        table.add_column(column, justify="left" if column == "plan" else "right")
    forecast = {c.label: psnr_of(c.order_mse or 0.0) for c in candidates}
    measured = {c.label: c.psnr or math.inf for c in candidates}
    for c in sorted(candidates, key=lambda c: -measured[c.label]):
        gap = forecast[c.label] - measured[c.label]
        table.add_row(c.label, f"{forecast[c.label]:.2f}", f"{measured[c.label]:.2f}",
                      f"{gap:+.2f}")  # fmt: skip
    console.print(table)
    gaps = [forecast[k] - measured[k] for k in forecast]
    console.print(f"Spearman(forecast, measured) = {spearman(forecast, measured):+.2f} over "
                  f"{len(gaps)} plans; mean gap {sum(gaps) / len(gaps):+.2f} dB, range "
                  f"{min(gaps):+.2f}..{max(gaps):+.2f} dB")  # fmt: skip


if __name__ == "__main__":
    main()
