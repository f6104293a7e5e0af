"""Token labels from character spans, through the tokenizer's offset mapping.

A phrase is found at every occurrence in the text (optionally ignoring case), at word boundaries in scripts
that separate words with spaces (so "lamb curry" does not match inside "lamb currywurst"; CJK and Thai have no
such boundaries). A token is labelled 1 when its character range overlaps a phrase span: a phrase that starts
or ends inside a subword still tags that subword, and a phrase cut by truncation keeps its tokens that remain.
Special and padding tokens get IGNORE (-100), so the loss and the metrics count real tokens only.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

IGNORE = -100

# Scripts written without spaces between words (Thai, Lao, Myanmar, Khmer, CJK, kana, Bopomofo): no
# word-boundary check inside them when matching phrases, and every piece of them starts a word for whole-word
# masking and for the word view (albert_exp/words.py). Hangul is written with spaces: not listed.
NO_SPACE_RANGES = (
    (0x0E00, 0x0EFF),
    (0x1000, 0x109F),
    (0x1780, 0x17FF),
    (0x2E80, 0x2FDF),
    (0x3040, 0x30FF),
    (0x3100, 0x312F),
    (0x31A0, 0x31FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0xFF66, 0xFF9F),
    (0x20000, 0x3FFFF),
)


def no_space_script(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in NO_SPACE_RANGES)


def _word_char(ch: str) -> bool:
    if not ch or not (ch.isalnum() or unicodedata.category(ch).startswith("M")):
        return False
    return not no_space_script(ch)


def find_spans(text: str, phrase: str, *, case_insensitive: bool = True) -> list[tuple[int, int]]:
    """Every occurrence of `phrase` in `text` as (start, end) character offsets (overlaps included)."""
    phrase = phrase.strip()
    if not phrase:
        return []
    hay, needle = (text.casefold(), phrase.casefold()) if case_insensitive else (text, phrase)
    if len(hay) != len(text):  # casefold changed lengths (e.g. German sharp s): fall back to lower()
        hay, needle = text.lower(), phrase.lower()
        if len(hay) != len(text):
            hay, needle = text, phrase
    spans = []
    start = hay.find(needle)
    while start != -1:
        end = start + len(needle)
        before = text[start - 1] if start > 0 else ""
        after = text[end] if end < len(text) else ""
        cuts_word_before = _word_char(before) and _word_char(text[start])
        cuts_word_after = _word_char(after) and _word_char(text[end - 1])
        if not (cuts_word_before or cuts_word_after):
            spans.append((start, end))
        start = hay.find(needle, start + 1)
    return spans


def phrase_spans(
    text: str, phrases: Sequence[str], *, case_insensitive: bool = True
) -> tuple[list[tuple[int, int]], list[str]]:
    """Spans of all phrases (merged where they overlap or touch), and the phrases not found in the text."""
    spans: list[tuple[int, int]] = []
    missing: list[str] = []
    for p in phrases:
        found = find_spans(text, p, case_insensitive=case_insensitive)
        if not found and p.strip():
            missing.append(p)
        spans.extend(found)
    return merge_spans(spans), missing


def merge_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def token_labels(
    offsets: Sequence[tuple[int, int]], special: Sequence[int], spans: Sequence[tuple[int, int]]
) -> list[int]:
    """1 for a token overlapping any span, 0 for other real tokens, IGNORE for special/padding tokens."""
    labels = []
    for (s, e), is_special in zip(offsets, special, strict=True):
        if is_special or e <= s:
            labels.append(IGNORE)
        else:
            labels.append(int(any(s < pe and e > ps for ps, pe in spans)))
    return labels


def tags_to_spans(offsets: Sequence[tuple[int, int]], tags: Sequence[int]) -> list[tuple[int, int]]:
    """Character spans of maximal runs of tagged tokens (the inverse of token_labels, for extraction)."""
    spans: list[tuple[int, int]] = []
    in_run = False
    for (s, e), t in zip(offsets, tags, strict=True):
        if t == 1 and e > s:
            if in_run:
                spans[-1] = (spans[-1][0], max(spans[-1][1], e))
            else:
                spans.append((s, e))
            in_run = True
        elif t != IGNORE or e > s:
            in_run = False
    return spans
