"""Batch inference with a logged phrase extractor: one review per line (.txt) or a CSV with a text column.

    albert-exp predict --model models:/toy-phrase-tagger@champion --input reviews.txt --output phrases.jsonl
    albert-exp predict --model runs:/<run id>/phrase_extractor --input reviews.csv --output phrases.csv

Output: .jsonl (one JSON object per review: text, phrases, spans) or .csv (text, phrases joined by `|`, spans as
JSON). Reviews go through the model in batches, with a progress bar.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from albert_exp.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="a pyfunc URI: models:/<name>@champion or runs:/<id>/phrase_extractor"
    )
    parser.add_argument("--input", required=True, help="reviews: .txt (one per line) or .csv")
    parser.add_argument("--output", required=True, help="where to write: .jsonl or .csv")
    parser.add_argument("--text-column", default="text", help="the CSV column holding the review (default: text)")
    parser.add_argument("--batch-size", type=int, default=256, help="reviews per model call (default: 256)")
    parser.add_argument("--threshold", type=float, default=0.5, help="tag probability of a phrase token")


def read_texts(path: Path, text_column: str) -> list[str]:
    if not path.is_file():
        raise UserError("input file not found", where=str(path), fix="give an existing .txt or .csv file")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if text_column not in (reader.fieldnames or []):
                raise UserError(
                    f"no column '{text_column}' (columns: {', '.join(reader.fieldnames or [])})",
                    where=f"{path}:1",
                    fix="pass --text-column NAME",
                )
            return [row[text_column] or "" for row in reader]
    return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def predict(model_uri: str, texts: list[str], batch_size: int = 256, threshold: float = 0.5) -> list[dict[str, Any]]:
    import mlflow
    import pandas as pd
    from tqdm import tqdm

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except mlflow.exceptions.MlflowException as exc:
        raise UserError(
            f"cannot load the model: {str(exc).splitlines()[0]}",
            where=model_uri,
            fix=f"check the name/alias and MLFLOW_TRACKING_URI (now {mlflow.get_tracking_uri()})",
        ) from None
    rows: list[dict[str, Any]] = []
    for i in tqdm(range(0, len(texts), batch_size), desc="predict", unit="batch", disable=None):
        chunk = texts[i : i + batch_size]
        out = model.predict(pd.DataFrame({"text": chunk}), params={"threshold": threshold})
        for text, phrases, spans in zip(chunk, out["phrases"], out["spans"], strict=True):
            rows.append({"text": text, "phrases": list(phrases), "spans": [dict(s) for s in spans]})
    return rows


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "phrases", "spans"])
            for r in rows:
                w.writerow([r["text"], "|".join(r["phrases"]), json.dumps(r["spans"], ensure_ascii=False)])
    else:
        with open(path, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def main(args: argparse.Namespace) -> dict[str, Any]:
    output = Path(args.output)
    if output.suffix.lower() not in (".csv", ".jsonl"):
        raise UserError("unknown output format", where=str(output), fix="end the name in .jsonl or .csv")
    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1", where="--batch-size")
    texts = read_texts(Path(args.input), args.text_column)
    rows = predict(args.model, texts, args.batch_size, args.threshold)
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
