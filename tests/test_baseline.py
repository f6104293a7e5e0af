"""The `baseline` stage (a linear-chain CRF on words), run as a user runs it, and its pyfunc."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from albert_exp.crf import bio, bio_to_spans
from albert_exp.words import word_spans


def test_bio_keeps_adjacent_dishes_apart():
    text = "tacos de birria pad thai and flan"
    words = word_spans(text)
    spans = [(0, 15), (16, 24), (29, 33)]
    tags = bio(words, spans)
    assert tags == ["B", "I", "I", "B", "I", "O", "B"]
    assert bio_to_spans(text, words, tags) == spans
    assert bio_to_spans(text, words, ["O", "I", "I", "O", "O", "O", "O"]) == [(6, 15)]  # I after O starts a span


def test_lookup_baseline_finds_training_names_only():
    from albert_exp.baseline import lookup_spans

    texts = ["the Lamb Curry and the lamb currywurst", "pad thai, then pho"]
    assert lookup_spans(texts, ["lamb curry", "pho", "tacos"]) == [[(4, 14)], [(15, 18)]]


def test_baseline_stage_trains_scores_and_logs_a_pyfunc(tmp_path):
    """corpus (realistic toy) then baseline, each a CLI subprocess; then the logged pyfunc predicts."""
    import mlflow
    import pandas as pd

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": uri}
    sizes = "name=crf corpus.toy=true corpus.toy_mode=realistic corpus.toy_documents=20 corpus.toy_train_rows=300"
    sizes += " corpus.toy_val_rows=80 corpus.toy_test_rows=120 baseline.c1=[0.05] baseline.c2=[0.01,1.0]"

    def cli(stage: str, *extra: str, code: int = 0) -> str:
        cmd = [sys.executable, "-m", "albert_exp", stage, "--workdir", str(tmp_path / "w"), "--set", sizes, *extra]
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert out.returncode == code, out.stderr[-3000:]
        return out.stderr

    for stage in ("corpus", "baseline"):
        cli(stage)
    results = json.loads((tmp_path / "w" / "baseline" / "results.json").read_text())
    assert results["c1"] == 0.05 and results["c2"] in (0.01, 1.0)
    # far above tagging nothing, and the seen/unseen split is there
    assert results["test/phrase_f1"] > 0.5 and results["test/unseen_mentions"] > 20
    assert results["test/word_accuracy"] > results["test/all_negative_word_accuracy"]
    # the lookup finds seen names, not unseen ones (a few unseen ones may contain a seen name)
    assert results["test/lookup_seen_phrase_recall"] > 0.5 > results["test/lookup_unseen_phrase_recall"]
    client = mlflow.MlflowClient(uri)
    run = client.get_run(results["run_id"])
    assert run.data.tags["stage"] == "baseline" and run.data.metrics["test/phrase_f1"] == pytest.approx(
        results["test/phrase_f1"]
    )
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(results["model_uri"])
        text = "we shared the tacos de birria and the coffee was cold"
        pred = model.predict(pd.DataFrame({"text": [text, ""]}))
    finally:
        mlflow.set_tracking_uri(None)
    assert list(pred.columns) == ["phrases", "spans", "tokens"] and list(pred["phrases"][1]) == []
    for span in pred["spans"][0]:
        assert text[span["start"] : span["end"]] == span["text"]
    assert [t["token"] for t in pred["tokens"][0]] == [text[s:e] for s, e in word_spans(text)]
    # promote takes the CRF like any candidate, compared on phrase F1 (it has no token accuracy)
    promote = ["--run-id", results["run_id"], "--model-name", "crf-tagger"]
    assert "promote.metric" in cli("promote", *promote, "--metric", "token_accuracy", code=2)  # says what to use
    cli("promote", *promote, "--metric", "phrase_f1")
    version = client.get_model_version_by_alias("crf-tagger", "champion")
    assert version.run_id == results["run_id"]
