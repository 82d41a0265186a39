"""Style statistics of a response, appended to its sentence embedding by "<embedder>+style" (L1, embedding).

A sentence embedder reads what a response says, not how long it is or whether it is a list: minilm's
vectors of a 3-sentence answer and of its 8-sentence version, or of the same sentences as "- " lines
and as one paragraph, are close. Users who differ on exactly those axes (`npalign data build style`)
are then invisible to the context encoder. An embedder named with the suffix "+style" (e.g.
"minilm+style") appends `STYLE_STATISTICS` of the response text to each item's unit-RMS features:

    log_words       log(1 + words) - 4     (words: runs of letters and digits; 20 -> -1.0, 150 -> +1.0)
    log_sentences   log(1 + sentences) - 1.5             (sentences end at . ! ? or a line break)
    list_share      2 * (list lines / non-empty lines) - 1
    log_list_lines  log(1 + list lines) - 1

each times `STYLE_GAIN`. The offsets centre them on typical answers; the gain gives the four of them
a say beside the D embedding coordinates (each of RMS 1) at the encoder's default initialisation.
They are pure functions of the text, computed on the fly and never cached; the cache keeps the base
embedder's vectors under its own name, so "minilm" and "minilm+style" share them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import Tensor

STYLE_SUFFIX = "+style"
STYLE_STATISTICS = ("log_words", "log_sentences", "list_share", "log_list_lines")
STYLE_GAIN = 3.0

_LIST_LINE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+\S")
_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]\u201d\u2019]*(?=\s|$)")


def split_style_suffix(name: str) -> tuple[str, bool]:
    """ "minilm+style" -> ("minilm", True); "minilm" -> ("minilm", False)."""
    if name.endswith(STYLE_SUFFIX):
        return name[: -len(STYLE_SUFFIX)], True
    return name, False


def list_lines(text: str) -> int:
    """Lines that start with a list marker ("- ", "* ", "• ", "1. ", "1) ") followed by text."""
    return sum(bool(_LIST_LINE.match(line)) for line in text.splitlines())


def list_line_share(text: str) -> float:
    """List lines / non-empty lines; 0.0 for an empty text."""
    lines = [line for line in text.splitlines() if line.strip()]
    return list_lines(text) / len(lines) if lines else 0.0


def num_sentences(text: str) -> int:
    """Sentences: runs of text ended by . ! ? (or by the end of a non-empty line); at least 1 for any text."""
    count = 0
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        ends = len(_SENTENCE_END.findall(line))
        count += ends + (0 if _SENTENCE_END.search(line[-3:] + " ") else 1)
    return max(count, 1)


def style_statistics(responses: Sequence[str]) -> Tensor:
    """(N, len(STYLE_STATISTICS)) float32 statistics of N response texts (see the module docstring)."""
    rows = []
    for text in responses:
        lines = list_lines(text)
        rows.append(
            [
                math.log1p(len(_WORD.findall(text))) - 4.0,
                math.log1p(num_sentences(text)) - 1.5,
                2.0 * list_line_share(text) - 1.0,
                math.log1p(lines) - 1.0,
            ]
        )
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(STYLE_STATISTICS)) * STYLE_GAIN
