"""A linear-chain CRF phrase tagger over words (python-crfsuite), and its pyfunc with the phrase extractor's
input and output (a DataFrame with `text` in; `phrases`, `spans`, `tokens` out; here a token is a word).

python-crfsuite is the maintained binding of CRFsuite (the library sklearn-crfsuite wraps): a wheel for
Python 3.11, no scikit-learn pinning to fight with, and nothing but the model file to ship with the pyfunc.

Words are those of albert_exp.words (the same word view as the ALBERT tagger's metrics); tags are BIO, so two
dishes next to each other stay two. Features are the classic NER set: the word lower-cased, prefixes and
suffixes, its shape (Xxxx, dd, ...), case and digit flags, and the same for two words either side.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import mlflow.pyfunc

from albert_exp.words import word_spans

Span = tuple[int, int]


def _shape(w: str) -> str:
    s = re.sub(r"[A-Z]", "X", w)
    s = re.sub(r"[a-z]", "x", s)
    s = re.sub(r"\d", "d", s)
    return re.sub(r"(.)\1+", r"\1\1", s)  # runs collapse to two: Xxxxxx -> Xxx


def _word_features(w: str) -> dict[str, Any]:
    low = w.lower()
    return {
        "w": low,
        "p2": low[:2],
        "p3": low[:3],
        "s2": low[-2:],
        "s3": low[-3:],
        "s4": low[-4:],
        "shape": _shape(w),
        "title": w.istitle(),
        "upper": w.isupper(),
        "alpha": w.isalpha(),
        "digit": w.isdigit(),
        "len": min(len(w), 10),
    }


def features(text: str, words: Sequence[Span]) -> list[dict[str, Any]]:
    """CRFsuite item features of every word: its own and those of two words either side."""
    own = [_word_features(text[s:e]) for s, e in words]
    out = []
    for i in range(len(words)):
        f: dict[str, Any] = {"bias": 1.0}
        for d in (-2, -1, 0, 1, 2):
            j = i + d
            if 0 <= j < len(words):
                keys = own[j] if d == 0 else {k: own[j][k] for k in ("w", "s3", "shape", "title", "upper")}
                f.update({f"{d}:{k}": v for k, v in keys.items()})
            else:
                f[f"{d}:edge"] = True
        if i > 0:  # whether the previous word is glued to this one (chef's, lamb-curry)
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


def train(
    texts: Sequence[str], gold: Sequence[Sequence[Span]], path: str, c1: float, c2: float, max_iterations: int
) -> None:
    import pycrfsuite

    trainer = pycrfsuite.Trainer(verbose=False)
    for text, spans in zip(texts, gold, strict=True):
        words = word_spans(text)
        trainer.append(features(text, words), bio(words, spans))
    trainer.set_params({"c1": c1, "c2": c2, "max_iterations": max_iterations})
    trainer.train(path)


def tag(tagger: Any, texts: Sequence[str]) -> list[dict[str, Any]]:
    """Phrases, spans and words (with tag and P(not O)) of each text, as the phrase extractor returns them."""
    out = []
    for text in texts:
        words = word_spans(text)
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

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as a schema
        import pandas as pd

        from albert_exp.serving import input_texts

        rows = tag(self.tagger, input_texts(model_input))
        return pd.DataFrame(rows, columns=["phrases", "spans", "tokens"])
