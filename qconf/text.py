"""User-supplied text on a terminal: control characters shown escaped (an ESC in a folder name
must not recolour or rewrite the screen), and rich markup escaped where rich prints it (rich
would take `qconf[torchao]` for a style tag and print `qconf`); in a Markdown file, every
character CommonMark/GFM would read as markup is backslash-escaped."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

# C0 and C1 control characters and DEL; tabs and newlines too (one problem = one line).
# ...and what can hide or reorder text: lone surrogates (undecodable file names), zero-width
# and bidirectional controls (U+200B-200F, U+202A-202E, U+2060-206F, U+FEFF).
_CONTROL = re.compile(
    r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]"
)


def safe(text: Any) -> str:
    """`text` as a string with every control character written as an escape (\\x1b, \\n):
    the ranges above, and every character Unicode calls a control, a format character (bidi
    marks, tags, soft hyphens), a surrogate, private-use, or a line/paragraph separator."""
    shown = _CONTROL.sub(_escaped, str(text))
    if shown.isascii():
        return shown
    return "".join(_escaped_char(c) if unicodedata.category(c) in _HIDDEN else c for c in shown)


_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def _escaped(match: re.Match[str]) -> str:
    return _escaped_char(match.group())


def _escaped_char(char: str) -> str:
    return char.encode("unicode_escape", "backslashreplace").decode()


def markup(text: Any) -> str:
    """`text` for a rich table cell or title: control characters and markup escaped."""
    from rich.markup import escape

    return escape(safe(text))


# ASCII punctuation that means something inline in CommonMark or GitHub's Markdown: escapes and
# code (\\ `), emphasis and strikethrough (* _ ~), links and images ([ ] !), HTML, autolinks and
# entities (< > &), table cells (|), URL and e-mail autolinks and :emoji: (: @), math ($),
# headings (#). CommonMark lets any ASCII punctuation be backslash-escaped and shows it as is.
_MARKDOWN = re.compile(r"[\\`*_~\[\]!<>&|:@$#]")
# GFM links a bare www.example.com with no scheme: break the dot after www.
_WWW = re.compile(r"(?i)(www)\.")


def markdown_text(text: Any) -> str:
    """`text` for a Markdown file (one line, e.g. a table cell): control characters escaped
    (see `safe`) and nothing in it rendered as emphasis, links, HTML, code or a table break."""
    escaped = _MARKDOWN.sub(lambda m: "\\" + m.group(), safe(text))
    return _WWW.sub(r"\1\\.", escaped)
