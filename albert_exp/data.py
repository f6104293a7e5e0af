"""Labelled CSVs (`text,phrase`) -> validated rows -> token ids and labels.

Bad input stops with one line naming the file and row and what to do: a missing file or column, an empty
file, bytes that are not UTF-8, a phrase longer than max_seq_length. Rows whose phrase does not occur in the
text are counted and reported with examples, then dropped or fatal (`on_missing_phrase`).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from albert_exp.errors import UserError
from albert_exp.labels import IGNORE, phrase_spans, token_labels


@dataclass
class Encoded:
    """One split, tokenised whole and cut into overlapping windows (albert_exp.windows).

    `input_ids`/`labels` are the windows (`[CLS] ... [SEP]`, labels IGNORE at the specials): what training
    iterates and `len()` counts. Per text: the gold character spans, the whole token sequence with offsets and
    labels, and which windows belong to it; evaluation merges the windows back and scores whole texts.
    """

    texts: list[str]
    input_ids: list[list[int]]
    labels: list[list[int]]
    offsets: list[list[tuple[int, int]]]
    digest: str
    dropped: list[dict[str, Any]] = field(default_factory=list)
    spans: list[list[tuple[int, int]]] = field(default_factory=list)
    token_labels: list[list[int]] = field(default_factory=list)
    bounds: list[list[tuple[int, int]]] = field(default_factory=list)  # per text: its windows' token ranges
    phrases: list[str] = field(default_factory=list)  # every gold phrase, for the seen/unseen word split
    train_words: set[str] | None = None  # words of the training phrases; None: no seen/unseen metrics
    aggregation: str = "average"  # token -> word scores (albert_exp.words)
    augmented: int = 0  # of `texts`, the mention-replaced copies (training only): the rest are the CSV's rows

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def windowed_rows(self) -> int:
        """Texts longer than one window (tagged in several overlapping windows, never cut)."""
        return sum(len(b) > 1 for b in self.bounds)


def decode_utf8(raw: bytes, path: Path) -> str:
    """A file's bytes as text; bytes that are not UTF-8 are a one-line error naming the file and line."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(
            f"bytes that are not UTF-8 at byte {exc.start}",
            where=f"{path}:{line}",
            fix="re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        ) from None


CSV_FIELD_LIMIT_MAX = 2**31 - 1  # the csv module keeps the limit in a C long (32 bits on Windows)


def csv_records(path: Path, content: str, columns: Sequence[str], fix: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(CSV row number, record) of every row of a decoded CSV file (row 1 is the header); a missing column is a
    UserError naming the header line. A field may be as long as the file (a 1 MB review): the csv module's
    default limit of 128 KiB is raised to the file's length (a process-wide setting, only ever raised)."""
    csv.field_size_limit(max(csv.field_size_limit(), min(len(content) + 1, CSV_FIELD_LIMIT_MAX)))
    reader = csv.DictReader(io.StringIO(content, newline=""))
    header = reader.fieldnames or []
    for col in columns:
        if col not in header:
            raise UserError(f"missing column '{col}' (columns: {', '.join(header)})", where=f"{path}:1", fix=fix)
    return enumerate(reader, start=2)


def read_labelled_csv(
    path: str | Path, text_column: str = "text", phrase_column: str = "phrase", separator: str = "|"
) -> tuple[list[tuple[int, str, list[str]]], str]:
    """Rows as (csv row number, text, phrases) and the sha256 of the file's bytes."""
    p = Path(path)
    if not p.is_file():
        raise UserError("file not found", where=str(p), fix="run `albert-exp corpus --toy` or give an existing CSV")
    raw = p.read_bytes()
    content = decode_utf8(raw, p)
    if not content.strip():
        raise UserError(
            "the file is empty", where=str(p), fix=f"write a header `{text_column},{phrase_column}` and rows"
        )
    records = csv_records(
        p, content, (text_column, phrase_column), "set finetune.text_column / finetune.phrase_column, or fix the header"
    )
    rows = []
    for i, rec in records:
        text = rec[text_column]
        if text is None or not text.strip():
            raise UserError("empty text", where=f"{p}:row {i}", fix="remove the row or fill in the text")
        phrases = [s.strip() for s in (rec[phrase_column] or "").split(separator) if s.strip()]
        rows.append((i, text, phrases))
    if not rows:
        raise UserError("the file has a header but no rows", where=str(p), fix="add labelled rows")
    return rows, hashlib.sha256(raw).hexdigest()


def labelled_spans(
    path: str | Path,
    *,
    text_column: str = "text",
    phrase_column: str = "phrase",
    separator: str = "|",
    case_insensitive: bool = True,
    on_missing_phrase: str = "drop",
    max_rows: int | None = None,
) -> tuple[list[tuple[int, str, list[tuple[int, int]], list[str]]], list[dict[str, Any]], str]:
    """Rows as (row number, text, gold character spans, phrases), the dropped rows (a phrase not in its text)
    and the file's sha256: the tokenizer-free view that encode() and the CRF baseline share."""
    rows, digest = read_labelled_csv(path, text_column, phrase_column, separator)
    if max_rows:
        rows = rows[:max_rows]
    kept, dropped = [], []
    for row, text, phrases in rows:
        spans, missing = phrase_spans(text, phrases, case_insensitive=case_insensitive)
        if missing:
            dropped.append({"row": row, "missing": missing, "text": text[:200]})
            if on_missing_phrase == "error":
                raise UserError(
                    f"phrase '{missing[0]}' does not occur in the text",
                    where=f"{path}:row {row}",
                    fix="fix the row, or set finetune.on_missing_phrase: drop",
                )
            continue
        kept.append((row, text, spans, phrases))
    if not kept:
        raise UserError(
            "no usable rows: every phrase is missing from its text",
            where=str(path),
            fix="check the phrase column and finetune.case_insensitive",
        )
    return kept, dropped, digest


def encode(
    path: str | Path,
    tokenizer: Any,
    *,
    max_seq_length: int,
    text_column: str = "text",
    phrase_column: str = "phrase",
    separator: str = "|",
    case_insensitive: bool = True,
    on_missing_phrase: str = "drop",
    max_rows: int | None = None,
    stride: int | None = None,
    aggregation: str = "average",
    train_words: set[str] | None = None,
    augment_copies: int = 0,
    seed: int = 0,
) -> Encoded:
    """Read, label and window a labelled CSV. stride: tokens shared by consecutive windows (None: a quarter
    of a window); train_words: the training phrases' words, for the seen/unseen metrics of val/test;
    augment_copies: mention-replaced copies of each review with a phrase (albert_exp.augment; training only)."""
    from albert_exp.windows import tokenize, window_bounds

    kept, dropped, digest = labelled_spans(
        path,
        text_column=text_column,
        phrase_column=phrase_column,
        separator=separator,
        case_insensitive=case_insensitive,
        on_missing_phrase=on_missing_phrase,
        max_rows=max_rows,
    )
    out = Encoded([], [], [], [], digest, dropped, train_words=train_words, aggregation=aggregation)
    width = max_seq_length - 2  # [CLS] and [SEP]
    stride = width // 4 if stride is None else stride
    for row, _, _, phrases in kept:
        for ph in phrases:
            n = len(tokenizer(ph, add_special_tokens=False)["input_ids"])
            if n > width:
                raise UserError(
                    f"phrase '{ph[:40]}' has {n} tokens, more than max_seq_length - 2 = {width}",
                    where=f"{path}:row {row}",
                    fix="raise finetune.max_seq_length or shorten the phrase",
                )
        out.phrases.extend(phrases)
    if augment_copies:
        from albert_exp.augment import augment

        copies = augment(kept, augment_copies, seed)
        kept, out.augmented = kept + copies, len(copies)
    all_ids, all_offsets = tokenize(tokenizer, [t for _, t, _, _ in kept])
    for (_, text, spans, _), ids, offsets in zip(kept, all_ids, all_offsets, strict=True):
        labels = token_labels(offsets, [0] * len(offsets), spans)
        bounds = window_bounds(len(ids), width, stride)
        out.texts.append(text)
        out.spans.append(spans)
        out.offsets.append(offsets)
        out.token_labels.append(labels)
        out.bounds.append(bounds)
        for a, b in bounds:
            out.input_ids.append([tokenizer.cls_token_id, *ids[a:b], tokenizer.sep_token_id])
            out.labels.append([IGNORE, *labels[a:b], IGNORE])
    return out


def encode_options(f: Any) -> dict[str, Any]:
    """encode()'s settings from a FinetuneConfig `f`: training, evaluation and promote read a CSV alike."""
    return dict(
        max_seq_length=f.max_seq_length,
        text_column=f.text_column,
        phrase_column=f.phrase_column,
        separator=f.phrase_separator,
        case_insensitive=f.case_insensitive,
        on_missing_phrase=f.on_missing_phrase,
        stride=f.window_stride,
        aggregation=f.aggregation,
    )


def encode_splits(paths: dict[str, Path], tokenizer: Any, f: Any) -> dict[str, Encoded]:
    """train/val/test of a FinetuneConfig `f`, windowed alike; val and test know the training phrases' words
    (for the seen/unseen metrics)."""
    from albert_exp.metrics import phrase_words

    kw = encode_options(f)
    train = encode(paths["train"], tokenizer, max_rows=f.max_train_rows, augment_copies=f.augment_mentions, **kw)
    known = phrase_words(train.phrases)
    return {"train": train, **{s: encode(paths[s], tokenizer, train_words=known, **kw) for s in ("val", "test")}}
