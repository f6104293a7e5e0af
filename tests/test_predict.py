"""`predict`: batch inference from a logged model on .txt and .csv input, with clear errors for bad input."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import tracking_in
from tests.test_tune import TINY, make_data


@pytest.fixture(scope="module")
def model_uri(tmp_path_factory):
    """One tiny model, logged once for the module into its own SQLite store."""
    from albert_exp import finetune
    from albert_exp.config import load_config

    tmp = tmp_path_factory.mktemp("predict")
    with tracking_in(tmp):
        make_data(tmp)
        cfg = load_config(None, [*TINY, f"workdir={tmp}", "finetune.epochs=2", "finetune.learning_rate=0.01"])
        yield finetune.run(cfg)["model_uri"]


def test_predict_txt_and_csv(model_uri, tmp_path, capsys):
    from albert_exp.cli import main

    reviews = ["The waiter was lovely.", "We loved the crispy tofu bao.", "Slow service but great miso soup."]
    (tmp_path / "reviews.txt").write_text("\n".join(reviews) + "\n\n")
    assert (
        main(
            [
                "predict",
                "--model",
                model_uri,
                "--input",
                str(tmp_path / "reviews.txt"),
                "--output",
                str(tmp_path / "out.jsonl"),
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == reviews and summary["reviews"] == 3
    # With threshold 0 every real token is tagged, so every review has spans: the offsets are checked on real
    # spans (at 0.5 a tiny model may find none, and a check over no spans cannot fail).
    out0 = tmp_path / "all.jsonl"
    args = ["--model", model_uri, "--input", tmp_path / "reviews.txt", "--output", out0, "--threshold", "0"]
    assert main(["predict", *map(str, args)]) == 0
    capsys.readouterr()
    tagged = [r for line in out0.read_text().splitlines() if (r := json.loads(line))["text"].strip()]
    assert len(tagged) == 3 and all(r["spans"] for r in tagged)  # (rows of blank lines, if any, have none)
    for r in rows + tagged:
        assert [s["text"] for s in r["spans"]] == r["phrases"]
        assert all(r["text"][s["start"] : s["end"]] == s["text"] and s["text"].strip() for s in r["spans"])

    with open(tmp_path / "reviews.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "review"])
        w.writerows(enumerate(reviews))
    assert (
        main(
            [
                "predict",
                "--model",
                model_uri,
                "--input",
                str(tmp_path / "reviews.csv"),
                "--text-column",
                "review",
                "--output",
                str(tmp_path / "out.csv"),
            ]
        )
        == 0
    )
    with open(tmp_path / "out.csv", newline="") as fh:
        out = list(csv.DictReader(fh))
    assert [r["text"] for r in out] == reviews
    assert [r["phrases"] for r in out] == ["|".join(r["phrases"]) for r in rows]  # same model, same answers


def test_predict_errors_are_one_line(model_uri, tmp_path, capsys):
    from albert_exp.cli import main

    (tmp_path / "r.csv").write_text("id,body\n1,hello\n")
    assert (
        main(
            ["predict", "--model", model_uri, "--input", str(tmp_path / "r.csv"), "--output", str(tmp_path / "o.jsonl")]
        )
        == 2
    )
    assert "no column 'text'" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                "--model",
                model_uri,
                "--input",
                str(tmp_path / "r.csv"),
                "--output",
                str(tmp_path / "o.parquet"),
            ]
        )
        == 2
    )
    assert "unknown output format" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                "--model",
                "models:/nope@champion",
                "--input",
                str(tmp_path / "r.csv"),
                "--text-column",
                "body",
                "--output",
                str(tmp_path / "o.jsonl"),
            ]
        )
        == 2
    )
    assert "cannot load the model" in capsys.readouterr().err
