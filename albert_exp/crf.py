"""A linear-chain CRF phrase tagger over words (python-crfsuite), and its pyfunc with the phrase extractor's
input and output (a DataFrame with `text` in; `phrases`, `spans`, `tokens` out; here a token is a word).

python-crfsuite is the maintained binding of CRFsuite (the library sklearn-crfsuite wraps): a wheel for
Python 3.11, no scikit-learn pinning to fight with, and nothing but the model file to ship with the pyfunc.

Items are the words of albert_exp.words (the same word view as the ALBERT tagger's metrics); tags are BIO, so
two dishes next to each other stay two. Features are sklearn-crfsuite's classic NER set, on the original-case
text: the word lower-cased, prefixes and suffixes of 2-3 characters, its shape (Xxxx, dd, ...), case and digit
flags, the same for two words either side, and the bigrams of lower forms in that window; transitions between
every pair of tags get a weight (`feature.possible_transitions`).

Scripts written without spaces (Chinese, Japanese, Thai, ...): the rule is per character, not per text. Every
character in albert_exp.labels.NO_SPACE_RANGES is an item of its own (words.word_spans cuts it so, for the
metrics too), and such an item's features are its character, the characters CHAR_WINDOW either side and the
character bigrams between them (what makes a word there); affixes, shape and case say nothing about one
character. So a Chinese review with an English dish name gets characters and words side by side, and a text
never switches wholesale on a share of characters. Whitespace words would make a Chinese clause one item, and a
dish inside it could never be tagged (tests/test_baseline.py measures both on a Chinese toy).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import mlflow.pyfunc
import pandas as pd

from albert_exp.labels import no_space_script
from albert_exp.words import word_spans

WINDOW = 2  # words either side whose features (and bigrams) an item sees: the classic NER window
# characters either side for a character of a script without spaces: about the same two words (a Chinese word
# is mostly 1-2 characters); on the Chinese toy of tests/test_baseline.py, test phrase F1 0.78/0.80 with 2
# characters, 0.88/0.87 with 4 (two seeds; 5 scored higher still, but the toy's few templates reward width)
CHAR_WINDOW = 4

Span = tuple[int, int]


def _shape(w: str) -> str:
    s = re.sub(r"[A-Z]", "X", w)
    s = re.sub(r"[a-z]", "x", s)
    s = re.sub(r"\d", "d", s)
    return re.sub(r"(.)\1+", r"\1\1", s)  # runs collapse to two: Xxxxxx -> Xxx


def _is_char(w: str) -> bool:
    """One character of a script written without spaces (albert_exp.labels.NO_SPACE_RANGES): an item of its own."""
    return len(w) == 1 and no_space_script(w)


def _own(w: str) -> dict[str, Any]:
    """An item's own features. A character of a script without spaces is its own form: affixes, shape and
    case say nothing about it, and its neighbours' n-grams (in `features`) carry the word it belongs to."""
    low = w.lower()
    if _is_char(w):
        return {"w": low, "char": True}
    return {
        "w": low,
        "p2": low[:2],
        "p3": low[:3],
        "s2": low[-2:],
        "s3": low[-3:],
        "shape": _shape(w),  # on the original case, like the flags: "Pad Thai" vs "pad thai" vs "PAD THAI"
        "title": w.istitle(),
        "upper": w.isupper(),
        "alpha": w.isalpha(),
        "digit": w.isdigit(),
        "len": min(len(w), 10),
    }


_CONTEXT = ("w", "p2", "p3", "s2", "s3", "shape", "title", "upper", "char")  # what a neighbour contributes


def features(text: str, words: Sequence[Span]) -> list[dict[str, Any]]:
    """CRFsuite features of every item: its own, those of WINDOW items either side (CHAR_WINDOW for a character
    of a script without spaces) and the bigrams of lower forms in that window."""
    forms = [text[s:e] for s, e in words]
    own = [_own(w) for w in forms]
    low = [o["w"] for o in own]
    n = len(words)
    out = []
    for i in range(n):
        f: dict[str, Any] = {"bias": 1.0, **own[i]}
        reach = CHAR_WINDOW if "char" in own[i] else WINDOW
        for d in range(-reach, reach + 1):
            j = i + d
            if d and 0 <= j < n:
                f.update({f"{d}:{k}": v for k, v in own[j].items() if k in _CONTEXT})
            elif d:
                f[f"{d}:edge"] = True
            if d < reach and 0 <= j and j + 1 < n:
                f[f"{d}|{d + 1}"] = f"{low[j]}|{low[j + 1]}"
        if i > 0:  # whether the previous item is glued to this one (chef's, lamb-curry, 宫保)
            f["glued"] = words[i - 1][1] == words[i][0]
        out.append(f)
    return out


def bio(words: Sequence[Span], spans: Sequence[Span]) -> list[str]:
    tags = []
    for s, e in words:
        inside = next(((ps, pe) for ps, pe in spans if ps <= s and e <= pe), None)
        tags.append("O" if inside is None else ("B" if inside[0] == s else "I"))
    return tags


def bio_to_spans(text: str, words: Sequence[Span], tags: Sequence[str]) -> list[Span]:
    """Spans of B/I runs; an I continues only a span it directly follows (whitespace between at most)."""
    spans: list[Span] = []
    prev = "O"
    for (s, e), t in zip(words, tags, strict=True):
        if t == "I" and prev != "O" and not text[spans[-1][1] : s].strip():
            spans[-1] = (spans[-1][0], e)
        elif t in ("B", "I"):
            spans.append((s, e))
        prev = t
    return spans


def trainer(
    texts: Sequence[str], gold: Sequence[Sequence[Span]], items: Callable[[str], list[Span]] = word_spans
) -> Any:
    """A CRFsuite trainer holding the features and tags of `texts`: fit it once per grid point (`fit`) instead of
    extracting the features again for each (about a quarter of a fit's CPU time on the realistic toy).
    `items` cuts a text into the CRF's items (the word view; tests compare others)."""
    import pycrfsuite

    out = pycrfsuite.Trainer(verbose=False)
    for text, spans in zip(texts, gold, strict=True):
        words = items(text)
        out.append(features(text, words), bio(words, spans))
    return out


def fit(data: Any, path: str, c1: float, c2: float, max_iterations: int) -> None:
    """Fit and save a CRF from a `trainer`. possible_transitions: weights for every pair of tags, also those
    training never shows (sklearn-crfsuite's all_possible_transitions), so an unseen transition is learned as
    unlikely instead of left at 0."""
    data.set_params({"c1": c1, "c2": c2, "max_iterations": max_iterations, "feature.possible_transitions": True})
    data.train(path)


def train(
    texts: Sequence[str],
    gold: Sequence[Sequence[Span]],
    path: str,
    c1: float,
    c2: float,
    max_iterations: int,
    items: Callable[[str], list[Span]] = word_spans,
) -> None:
    """Fit and save a CRF on `texts` (one grid point: see `trainer` for several)."""
    fit(trainer(texts, gold, items), path, c1, c2, max_iterations)


def tag(tagger: Any, texts: Sequence[str], items: Callable[[str], list[Span]] = word_spans) -> list[dict[str, Any]]:
    """Phrases, spans and words (with tag and P(not O)) of each text, as the phrase extractor returns them."""
    out = []
    for text in texts:
        words = items(text)
        tags = tagger.tag(features(text, words)) if words else []
        spans = bio_to_spans(text, words, tags)
        scores = [1.0 - tagger.marginal("O", i) for i in range(len(words))] if words else []
        out.append(
            {
                "phrases": [text[s:e] for s, e in spans],
                "spans": [{"start": s, "end": e, "text": text[s:e]} for s, e in spans],
                "tokens": [
                    {"token": text[s:e], "start": s, "end": e, "tag": int(t != "O"), "score": round(p, 4)}
                    for (s, e), t, p in zip(words, tags, scores, strict=True)
                ],
            }
        )
    return out


class CRFExtractor(mlflow.pyfunc.PythonModel):
    """pyfunc: DataFrame with a `text` column -> DataFrame with phrases, spans and tokens (words) per row."""

    def load_context(self, context: Any) -> None:
        import pycrfsuite

        self.tagger = pycrfsuite.Tagger()
        self.tagger.open(context.artifacts["crf_model"])

    # A DataFrame hint, as the ALBERT extractor's (albert_exp/serving.py): no schema inferred from it, and no
    # warning on every load that the method has no type hints.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from albert_exp.serving import input_texts

        rows = tag(self.tagger, input_texts(model_input))
        return pd.DataFrame(rows, columns=["phrases", "spans", "tokens"])
