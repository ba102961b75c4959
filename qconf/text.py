"""User-supplied text on a terminal: control characters shown escaped (an ESC in a folder name
must not recolour or rewrite the screen), and rich markup escaped where rich prints it (rich
would take `qconf[torchao]` for a style tag and print `qconf`)."""

from __future__ import annotations

import re
from typing import Any

# C0 and C1 control characters and DEL; tabs and newlines too (one problem = one line).
# ...and what can hide or reorder text: lone surrogates (undecodable file names), zero-width
# and bidirectional controls (U+200B-200F, U+202A-202E, U+2060-206F, U+FEFF).
_CONTROL = re.compile(
    r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]"
)


def safe(text: Any) -> str:
    """`text` as a string with every control character written as an escape (\\x1b, \\n)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode(),
                        str(text))  # fmt: skip


def markup(text: Any) -> str:
    """`text` for a rich table cell or title: control characters and markup escaped."""
    from rich.markup import escape

    return escape(safe(text))
