"""`predict`: batch inference from a logged model on .txt and .csv input, with clear errors for bad input."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import served_model, tracking_in
from tests.test_tune import TINY, make_data


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One tiny model, logged once for the module into its own SQLite store."""
    from albert_exp.config import load_config
    from tests.conftest import stage_runner

    tmp = tmp_path_factory.mktemp("predict")
    with tracking_in(tmp) as uri:
        make_data(tmp)
        cfg = load_config(None, [*TINY, f"workdir={tmp}", "finetune.epochs=2", "finetune.learning_rate=0.01"])
        yield {"model_uri": stage_runner("finetune")(cfg)["model_uri"], "tracking_uri": uri, "tmp": tmp}


@pytest.fixture(scope="module")
def model_uri(logged):
    return logged["model_uri"]


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
    assert [r["text"] for r in rows] == [*reviews, ""] and summary["reviews"] == 4  # the blank line is a row
    assert [r["line"] for r in rows] == [1, 2, 3, 4] and rows[-1]["phrases"] == []
    rows = rows[:3]
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
    assert [r["text"] for r in out] == reviews and [r["line"] for r in out] == ["2", "3", "4"]
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
    assert "missing column 'text'" in capsys.readouterr().err
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


def test_predict_keeps_one_row_per_input_line(model_uri, tmp_path):
    from albert_exp.cli import main

    lines = ["first review", "", "a line\u2028with a line separator", "form\ffeed", "crlf line", "  "]
    (tmp_path / "in.txt").write_bytes(("\n".join(lines[:4]) + "\ncrlf line\r\n  \n").encode())
    assert (
        main(
            [
                "predict",
                "--model",
                model_uri,
                "--input",
                str(tmp_path / "in.txt"),
                "--output",
                str(tmp_path / "o.jsonl"),
            ]
        )
        == 0
    )
    # JSON Lines: records end at "\n" (U+2028 inside a record is legal JSON text)
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text(encoding="utf-8").split("\n") if line]
    assert [(r["line"], r["text"]) for r in rows] == list(enumerate(lines, start=1))


def test_predict_bad_bytes_and_directory_output_are_one_line_errors(model_uri, tmp_path, capsys):
    from albert_exp.cli import main

    (tmp_path / "in.txt").write_bytes(b"fine\ncaf\xe9 au lait\n")
    args = ["predict", "--model", model_uri, "--input", str(tmp_path / "in.txt")]
    assert main([*args, "--output", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "in.txt:2: bytes that are not UTF-8" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "good.txt").write_text("fine\n")
    (tmp_path / "out.jsonl").mkdir()
    assert (
        main(
            [
                "predict",
                "--model",
                model_uri,
                "--input",
                str(tmp_path / "good.txt"),
                "--output",
                str(tmp_path / "out.jsonl"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "the output is a directory" in err and len(err.strip().splitlines()) == 1


def test_served_model_answers_400_to_a_text_that_is_not_a_string(logged):
    """Over HTTP on loopback, as a client would call `mlflow models serve`."""
    from tests.conftest import post_rows as post

    long = "the waiter was lovely and the crispy tofu bao was great. " * 400
    with served_model(logged["model_uri"], logged["tracking_uri"], logged["tmp"], timeout_s=180) as port:
        for bad in ([[5]], [[None]], [["fine"], [3.5]]):
            status, answer = post(port, bad)
            assert status == 400, (bad, status, answer)
            assert "string" in answer["message"], answer
        status, answer = post(port, [["We loved the crispy tofu bao."], [long]])
        assert status == 200
        tokens = answer["predictions"][1]["tokens"]
        assert tokens[-1]["end"] >= len(long.rstrip()) - 1  # the whole review was tagged, not its start


def test_predict_device(model_uri, tmp_path, capsys, caplog):
    """--device cpu reaches the extractor (logged with device auto) without MLflow's warning about unknown keys
    and gives auto's answers here; --device cuda on a host without CUDA is one line, before anything is read."""
    import torch

    from albert_exp.cli import main

    (tmp_path / "r.txt").write_text("We loved the crispy tofu bao.\nSlow service.\n")
    outs = {}
    for device in ("auto", "cpu"):
        outs[device] = tmp_path / f"{device}.jsonl"
        args = ["--model", model_uri, "--input", tmp_path / "r.txt", "--output", outs[device], "--device", device]
        assert main(["predict", *map(str, args)]) == 0
    assert outs["auto"].read_text() == outs["cpu"].read_text()
    assert "were ignored" not in caplog.text
    if torch.cuda.is_available():
        return
    capsys.readouterr()
    args = ["--model", model_uri, "--input", tmp_path / "missing.txt", "--output", tmp_path / "o.jsonl"]
    assert main(["predict", *map(str, args), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device: device cuda asked for, but this machine has no CUDA device" in err and "missing" not in err


def test_predict_creates_no_store_and_prints_no_mlflow_warning(logged, tmp_path):
    """Run where there is no mlflow.db, predict says so and leaves none behind; with the store, it prints no
    warning the user cannot act on (MLflow's "Add type hints to the `predict` method")."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("MLFLOW_TRACKING_URI", None)
    (tmp_path / "r.txt").write_text("The waiter was lovely.\n")
    cmd = [sys.executable, "-m", "albert_exp", "predict", "--input", "r.txt", "--output", "o.jsonl", "--model"]
    out = subprocess.run([*cmd, "models:/toy@champion"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "no MLflow store at" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "mlflow.db").exists()
    env["MLFLOW_TRACKING_URI"] = logged["tracking_uri"]
    out = subprocess.run([*cmd, logged["model_uri"]], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "Add type hints" not in out.stderr, out.stderr[-2000:]
