"""Sizes for people: binary units (KiB, MiB, GiB), the units GPU memory is quoted in, and the
one reader of a size a user types (`list --fits`, `tune --budget`, `load --max-shard-size`)."""

from __future__ import annotations

import math
import re
from fractions import Fraction

from qconf.errors import PlanError, Problem


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GiB"


GIB = 2**30
# Bytes per unit, matched case-insensitively. A bare number is GiB (GPU memory is quoted in it);
# K/M/G/T alone are binary too, as `free -g` and docker read them.
UNITS = {
    "": GIB,
    "b": 1,
    **{p: 2 ** (10 * n) for n, p in enumerate("kmgt", 1)},
    **{f"{p}ib": 2 ** (10 * n) for n, p in enumerate("kmgt", 1)},
    **{f"{p}b": 10 ** (3 * n) for n, p in enumerate("kmgt", 1)},
}
MAX_SIZE = 2**60  # 1 EiB: far beyond any machine's memory, well inside an int64
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*")
# The one statement of what a size means, for every size a user types (`list --fits`,
# `tune budget=`): help texts and error messages quote it rather than restate it.
SIZE_RULE = (
    "a number and a unit: B bytes; KiB/MiB/GiB/TiB (or K/M/G/T) powers of 1024; "
    "KB/MB/GB/TB powers of 1000; a bare number is GiB (16 = 16GiB)"
)
_SIZE_HELP = "write e.g. 16GiB, 24G, 12000MiB or 16GB (a bare number is GiB)"  # one line


def size_help(what: str) -> str:
    """A size flag's help text: what the size is for, then SIZE_RULE."""
    return f"{what}; SIZE is {SIZE_RULE}"


def parse_size(text: str, where: str = "size") -> int:
    """Bytes in `text` (SIZE_RULE), e.g. '16GiB', '16 GiB', '16G', '16' ->
    16 * 2**30 and '16GB' -> 16e9. A PlanError (a ValueError) naming `where` for anything else:
    an unknown unit, a sign, an exponent, nan/inf, zero, or more than MAX_SIZE."""
    match = _SIZE.fullmatch(text) if len(text) <= 64 else None
    scale = UNITS.get(match.group(2).lower()) if match else None
    if match is None or scale is None:
        what = "is negative" if text.strip().startswith("-") else "is not a size"
        raise PlanError(Problem(where, f"{_quoted(text)} {what}", _SIZE_HELP))
    # exact arithmetic: no float rounding, and a digit string can never become inf
    size = math.floor(Fraction(match.group(1)) * scale)
    if size <= 0:
        raise PlanError(Problem(where, f"{_quoted(text)} is not a positive size", _SIZE_HELP))
    if size > MAX_SIZE:
        raise PlanError(Problem(where, f"{_quoted(text)} is larger than any machine's memory",
                                f"give at most {MAX_SIZE // 2**30:,}GiB"))  # fmt: skip
    return size


def _quoted(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")
