"""Characters that draw nothing, removed from captions before they are embedded.

A caption of zero-width spaces, bidi marks, a BOM, soft hyphens, emoji tag characters, variation
selectors or control characters looks empty to a reader but is not empty text: the encoder
would embed it as if it said something. `strip_invisible` removes them everywhere (a caption
made only of them becomes '' and so "no caption"), which also rejoins words split by a
zero-width space or a soft hyphen (`hel`, U+200B, `lo` reads `hello`).

What counts: Unicode categories Cf (format: U+200B-U+200F, U+202A-U+202E, U+2060-U+206F,
U+FEFF, U+00AD, tags U+E0000-U+E007F, ...) and Cs (lone surrogates), control characters (Cc)
other than whitespace (tab, newline ... stay, the caption's whitespace rule makes them one
space), variation selectors (U+FE00-U+FE0F, U+E0100-U+E01EF, Mongolian U+180B-U+180F), the
combining grapheme joiner U+034F and the blank-looking fillers U+115F, U+1160, U+3164, U+FFA0,
U+2800. With `keep_emoji_glue` (captions whose emoji are kept), the joiner U+200D, the emoji
variation selectors U+FE0E/U+FE0F and tag characters stay where they follow a symbol (category
So or Sk) or another such character, so emoji sequences (a family, a flag of England) stay whole.
"""
from __future__ import annotations

import unicodedata

_ALSO = frozenset([*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0), *range(0x180B, 0x1810),
                   0x034F, 0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800])
_GLUE = frozenset([0x200D, 0xFE0E, 0xFE0F, *range(0xE0020, 0xE0080)])


def is_invisible(ch: str) -> bool:
    """Whether `ch` draws nothing and carries no word (see the module docstring)."""
    category = unicodedata.category(ch)
    return (category in ("Cf", "Cs") or (category == "Cc" and not ch.isspace())
            or ord(ch) in _ALSO)


def strip_invisible(text: str, keep_emoji_glue: bool = False) -> str:
    """`text` without its invisible characters (emoji sequences' glue kept on request)."""
    if text.isascii() and text.isprintable():
        return text
    out: list[str] = []
    for ch in text:
        if not is_invisible(ch):
            out.append(ch)
        elif keep_emoji_glue and ord(ch) in _GLUE and out and (
                ord(out[-1]) in _GLUE or unicodedata.category(out[-1]) in ("So", "Sk")):
            out.append(ch)
    return "".join(out)
