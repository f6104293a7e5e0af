"""Batch inference with a logged phrase extractor: one review per line (.txt) or a CSV with a text column.

    albert-exp predict --model models:/toy-phrase-tagger@champion --input reviews.txt --output phrases.jsonl
    albert-exp predict --model runs:/<run id>/phrase_extractor --input reviews.csv --output phrases.csv

Output: one row per input line (blank lines too; a .txt is split on "\n" only) or CSV row, with its number:
.jsonl (one JSON object per review: line, text, phrases, spans) or .csv (line, text, phrases joined by `|`,
spans as JSON). Reviews go through the model in batches, with a progress bar. Bytes that are not UTF-8, an
output path that is a directory or the input itself (also through a link), a --threshold outside [0, 1] and a
--model URI of a kind we do not load (MODEL_URIS) and --device cuda on a host without CUDA stop with one line
(exit 2) before anything is read or written. The model runs on the GPU when the host has one (--device auto).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path
from typing import Any

from albert_exp.errors import UserError

# The model URIs `predict` loads; anything else (http://, s3://, a typo) is refused before MLflow sees it.
MODEL_URIS = "models:/<name>@<alias>, models:/<name>/<version>, runs:/<run id>/<path> or a local model directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="a pyfunc URI: models:/<name>@champion or runs:/<id>/phrase_extractor"
    )
    parser.add_argument("--input", required=True, help="reviews: .txt (one per line) or .csv")
    parser.add_argument("--output", required=True, help="where to write: .jsonl or .csv")
    parser.add_argument("--text-column", default="text", help="the CSV column holding the review (default: text)")
    parser.add_argument("--batch-size", type=int, default=256, help="reviews per model call (default: 256)")
    parser.add_argument("--threshold", type=float, default=0.5, help="tag probability of a phrase token")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the model runs (default: auto, CUDA when this host has it)",
    )


def read_texts(path: Path, text_column: str) -> list[tuple[int, str]]:
    """(line or CSV row number, text) of every review. A .txt has one review per line, split on "\n" only
    (a "\r" before it is dropped; U+2028 or form feeds stay inside the review); blank lines are kept, so the
    output has one row per input line."""
    if not path.is_file():
        raise UserError("input file not found", where=str(path), fix="give an existing .txt or .csv file")
    from albert_exp.data import csv_records, decode_utf8

    content = decode_utf8(path.read_bytes(), path)
    if path.suffix.lower() == ".csv":
        records = csv_records(path, content, [text_column], "pass --text-column NAME")
        return [(i, row[text_column] or "") for i, row in records]
    lines = content.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line starts no new one
    return [(i, line.removesuffix("\r")) for i, line in enumerate(lines, start=1)]


def predict(
    model_uri: str, texts: list[tuple[int, str]], batch_size: int = 256, threshold: float = 0.5, device: str = "auto"
) -> list[dict[str, Any]]:
    """One output row per input (line number, text), in order. `device`: where an ALBERT phrase extractor runs
    (auto: CUDA when present; extractors logged before the setting existed always run on auto)."""
    import mlflow
    import pandas as pd
    from tqdm import tqdm

    from albert_exp.tracking.store import missing_sqlite_store

    missing = missing_sqlite_store() if model_uri.startswith(("models:", "runs:")) else None
    if missing:  # opening it would leave an empty mlflow.db behind
        raise UserError(
            f"no MLflow store at {missing}",
            where=model_uri,
            fix="run from the directory that holds mlflow.db, or set MLFLOW_TRACKING_URI to the store",
        )
    try:
        # auto is what a served extractor does by itself (and the CRF's has no device: MLflow would warn)
        model = mlflow.pyfunc.load_model(model_uri, model_config={"device": device} if device != "auto" else None)
    except mlflow.exceptions.MlflowException as exc:
        raise UserError(
            f"cannot load the model: {str(exc).splitlines()[0]}",
            where=model_uri,
            fix=f"check the name/alias and MLFLOW_TRACKING_URI (now {mlflow.get_tracking_uri()})",
        ) from None
    rows: list[dict[str, Any]] = []
    for i in tqdm(range(0, len(texts), batch_size), desc="predict", unit="batch", disable=None):
        chunk = texts[i : i + batch_size]
        out = model.predict(pd.DataFrame({"text": [t for _, t in chunk]}), params={"threshold": threshold})
        for (line, text), phrases, spans in zip(chunk, out["phrases"], out["spans"], strict=True):
            rows.append({"line": line, "text": text, "phrases": list(phrases), "spans": [dict(s) for s in spans]})
    return rows


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["line", "text", "phrases", "spans"])
            for r in rows:
                spans = json.dumps(r["spans"], ensure_ascii=False)
                w.writerow([r["line"], r["text"], "|".join(r["phrases"]), spans])
    else:
        with open(path, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def check_model_uri(uri: str) -> None:
    """A registry or run URI, or a local path (also file:); a one-letter scheme is a Windows drive."""
    from urllib.parse import urlparse

    scheme = urlparse(uri).scheme.lower()
    if scheme not in ("models", "runs", "file", "") and len(scheme) != 1:
        raise UserError(
            f"a model URI of kind {scheme}: is not understood", where=f"--model {uri}", fix=f"give {MODEL_URIS}"
        )


def same_file(a: Path, b: Path) -> bool:
    """Whether a and b are one file: the same device and inode when both exist (symlinks, hard links), else the
    same resolved path."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return a.resolve() == b.resolve()
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def main(args: argparse.Namespace) -> dict[str, Any]:
    output = Path(args.output)
    check_model_uri(args.model)
    if not (0.0 <= args.threshold <= 1.0):  # NaN too
        raise UserError(
            f"--threshold {args.threshold:g} is not a probability", where="--threshold", fix="give a value in [0, 1]"
        )
    if same_file(Path(args.input), output):
        raise UserError(
            f"the output is the input {args.input}", where=str(output), fix="write the predictions to another file"
        )
    if output.suffix.lower() not in (".csv", ".jsonl"):
        raise UserError("unknown output format", where=str(output), fix="end the name in .jsonl or .csv")
    if output.is_dir():
        raise UserError("the output is a directory", where=str(output), fix="give a file name ending in .jsonl or .csv")
    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1", where="--batch-size")
    from albert_exp.devices import resolve_device

    resolve_device(args.device, "--device")  # cuda on a host without it: one line, before anything is read
    texts = read_texts(Path(args.input), args.text_column)
    rows = predict(args.model, texts, args.batch_size, args.threshold, args.device)
    write_rows(rows, output)
    with_phrases = sum(1 for r in rows if r["phrases"])
    return {
        "model": args.model,
        "input": args.input,
        "output": str(output),
        "reviews": len(rows),
        "reviews_with_phrases": with_phrases,
        "phrases": sum(len(r["phrases"]) for r in rows),
    }
