"""Mention replacement: copies of training reviews whose phrase mentions are swapped for other names.

A tagger trained on few names learns the names instead of their contexts (on the realistic toy, recall on
names seen in training far exceeds recall on unseen ones). Replacing each gold mention with a new name, made
word by word from either another training phrase word or a pseudo-word sampled from a character model of the
training phrase words, keeps the contexts and breaks the name -> tag shortcut (mention replacement, as in the
NER augmentation literature, e.g. Dai & Adel 2020). The replaced text's spans are recomputed; casing follows
the original mention (lower, UPPER, Title).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Sequence

Row = tuple[int, str, list[tuple[int, int]], list[str]]  # (row number, text, gold spans, phrases)


class CharModel:
    """Order-2 character Markov model of words: new words that look like the training names' words."""

    def __init__(self, words: Sequence[str]):
        self.next: dict[str, list[str]] = defaultdict(list)
        for w in words:
            padded = "^^" + w + "$"
            for i in range(len(w) + 1):
                self.next[padded[i : i + 2]].append(padded[i + 2])

    def word(self, rng: random.Random, max_len: int = 12) -> str:
        for _ in range(20):
            out, ctx = "", "^^"
            while len(out) < max_len:
                ch = rng.choice(self.next[ctx]) if self.next[ctx] else "$"
                if ch == "$":
                    break
                out += ch
                ctx = ctx[1] + ch
            if len(out) >= 3:
                return out
        return out or "x"


def _cased_like(new: str, old: str) -> str:
    if old.isupper():
        return new.upper()
    if old.istitle():
        return new.title()
    if old[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


def augment(rows: Sequence[Row], copies: int, seed: int, pseudo_share: float = 0.5) -> list[Row]:
    """`copies` new rows for every row with a mention (negatives are not copied)."""
    words = sorted({w for _, _, _, ps in rows for p in ps for w in re.findall(r"\w+", p.lower())})
    if not copies or not words:
        return []
    chars = CharModel(words)
    rng = random.Random(f"{seed}-mention-replacement")
    out: list[Row] = []
    for row, text, spans, _ in rows:
        if not spans:
            continue
        for _ in range(copies):
            pieces, new_spans, phrases, last = [], [], [], 0
            pos = 0
            for s, e in spans:
                old = text[s:e]
                name = re.sub(
                    r"\w+",
                    lambda m: _cased_like(chars.word(rng) if rng.random() < pseudo_share else rng.choice(words), m[0]),
                    old,
                )
                pieces.append(text[last:s])
                pos += s - last
                new_spans.append((pos, pos + len(name)))
                pieces.append(name)
                pos += len(name)
                phrases.append(name)
                last = e
            pieces.append(text[last:])
            out.append((row, "".join(pieces), new_spans, phrases))
    return out
