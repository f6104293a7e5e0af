"""Labelled CSVs (`text,phrase`) -> validated rows -> token ids and labels.

Bad input stops with one line naming the file and row and what to do: a missing file or column, an empty
file, bytes that are not UTF-8, a phrase longer than max_seq_length. Rows whose phrase does not occur in the
text are counted and reported with examples, then dropped or fatal (`on_missing_phrase`).
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from albert_exp.errors import UserError
from albert_exp.labels import IGNORE, phrase_spans, token_labels


@dataclass
class Encoded:
    """One split, tokenised: ragged lists (batches are padded when collated)."""

    texts: list[str]
    input_ids: list[list[int]]
    labels: list[list[int]]
    offsets: list[list[tuple[int, int]]]
    digest: str
    dropped: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def read_labelled_csv(
    path: str | Path, text_column: str = "text", phrase_column: str = "phrase", separator: str = "|"
) -> tuple[list[tuple[int, str, list[str]]], str]:
    """Rows as (csv row number, text, phrases) and the sha256 of the file's bytes."""
    p = Path(path)
    if not p.is_file():
        raise UserError("file not found", where=str(p), fix="run `albert-exp corpus --toy` or give an existing CSV")
    raw = p.read_bytes()
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(
            f"bytes that are not UTF-8 at byte {exc.start}",
            where=f"{p}:{line}",
            fix="re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        ) from None
    if not content.strip():
        raise UserError(
            "the file is empty", where=str(p), fix=f"write a header `{text_column},{phrase_column}` and rows"
        )
    reader = csv.DictReader(io.StringIO(content, newline=""))
    columns = reader.fieldnames or []
    for col in (text_column, phrase_column):
        if col not in columns:
            raise UserError(
                f"missing column '{col}' (columns: {', '.join(columns)})",
                where=f"{p}:1",
                fix="set finetune.text_column / finetune.phrase_column, or fix the header",
            )
    rows = []
    for i, rec in enumerate(reader, start=2):
        text = rec[text_column]
        if text is None or not text.strip():
            raise UserError("empty text", where=f"{p}:row {i}", fix="remove the row or fill in the text")
        phrases = [s.strip() for s in (rec[phrase_column] or "").split(separator) if s.strip()]
        rows.append((i, text, phrases))
    if not rows:
        raise UserError("the file has a header but no rows", where=str(p), fix="add labelled rows")
    return rows, hashlib.sha256(raw).hexdigest()


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
) -> Encoded:
    rows, digest = read_labelled_csv(path, text_column, phrase_column, separator)
    if max_rows:
        rows = rows[:max_rows]
    out = Encoded([], [], [], [], digest)
    budget = max_seq_length - 2  # [CLS] and [SEP]
    for row, text, phrases in rows:
        for ph in phrases:
            n = len(tokenizer(ph, add_special_tokens=False)["input_ids"])
            if n > budget:
                raise UserError(
                    f"phrase '{ph[:40]}' has {n} tokens, more than max_seq_length - 2 = {budget}",
                    where=f"{path}:row {row}",
                    fix="raise finetune.max_seq_length or shorten the phrase",
                )
        spans, missing = phrase_spans(text, phrases, case_insensitive=case_insensitive)
        if missing:
            out.dropped.append({"row": row, "missing": missing, "text": text[:200]})
            if on_missing_phrase == "error":
                raise UserError(
                    f"phrase '{missing[0]}' does not occur in the text",
                    where=f"{path}:row {row}",
                    fix="fix the row, or set finetune.on_missing_phrase: drop",
                )
            continue
        enc = tokenizer(
            text,
            truncation=True,
            max_length=max_seq_length,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        out.texts.append(text)
        out.input_ids.append(enc["input_ids"])
        out.offsets.append(offsets)
        out.labels.append(token_labels(offsets, enc["special_tokens_mask"], spans))
    if not out.texts:
        raise UserError(
            "no usable rows: every phrase is missing from its text",
            where=str(path),
            fix="check the phrase column and finetune.case_insensitive",
        )
    return out


def collate(input_ids: list[list[int]], labels: list[list[int]] | None, pad_id: int) -> dict[str, Any]:
    """Pad a batch to its longest sequence (cheaper than padding everything to max_seq_length)."""
    import torch

    width = max(len(x) for x in input_ids)
    ids = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    for i, x in enumerate(input_ids):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if labels is not None:
        lab = torch.full((len(labels), width), IGNORE, dtype=torch.long)
        for i, y in enumerate(labels):
            lab[i, : len(y)] = torch.tensor(y)
        batch["labels"] = lab
    return batch
