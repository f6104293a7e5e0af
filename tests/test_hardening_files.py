"""Never lose a user's file, and no process outlives its command (issue #24), through the CLI as a user meets it:
exit 2 with one line naming the file or flag and what to do, and every file that was there byte-identical
afterwards (tests/test_bad_inputs.cli_error)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, tracking_in
from tests.test_bad_inputs import cli_error

# ---------------------------------------------------------------------------------------------- convert --out


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> Path:
    import torch

    from albert_exp.convert import hf

    torch.manual_seed(0)
    kw = dict(vocab_size=100, embedding_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    model = hf.build_model({**kw, "intermediate_size": 20, "max_position_embeddings": 16, "hidden_act": "gelu_new"})
    path = tmp_path_factory.mktemp("hf") / "hf"
    model.save_pretrained(str(path))
    return path


def test_convert_refuses_an_out_that_holds_a_users_files(tiny_hf, tmp_path):
    out = tmp_path / "thesis"
    (out / "chapters").mkdir(parents=True)
    (out / "chapters" / "1.tex").write_text("my only copy\n")
    args = ["convert", "hf-to-tf", "--source", tiny_hf, "--out", out]
    cli_error(
        args, [out, "not written by `albert-exp convert`", "1.tex", "new or empty --out"], [out], cwd=tmp_path, env={}
    )
    assert not list(tmp_path.glob(".thesis.*")), "a staging directory was left behind"


@pytest.mark.slow  # two conversions in-process (TensorFlow, ~15 s)
def test_convert_replaces_its_own_output_but_not_a_file_added_to_it(tiny_hf, tmp_path, capsys):
    from albert_exp.cli import main
    from albert_exp.convert import MARKER

    out = tmp_path / "tf"
    args = ["convert", "hf-to-tf", "--source", str(tiny_hf), "--out", str(out)]
    assert main(args) == 0
    listed = json.loads((out / MARKER).read_text())["files"]
    assert "results.json" in listed and any(f.startswith("model.ckpt-0.") for f in listed)
    assert main([*args, "--global-step", "7"]) == 0  # its own output: replaced
    assert (out / "model.ckpt-7.index").is_file() and not (out / "model.ckpt-0.index").exists()
    (out / "notes.md").write_text("kept beside the checkpoint by hand\n")
    capsys.readouterr()
    cli_error(args, [out, "holds files a conversion did not write", "notes.md"], [out], cwd=tmp_path, env={})


# ---------------------------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """An MLflow SQLite store that exists already (creating one logs lines on stderr) and has no models."""
    import mlflow

    root = tmp_path_factory.mktemp("store")
    with tracking_in(root) as uri:
        mlflow.MlflowClient().search_experiments()
    return {"root": root, "env": {"MLFLOW_TRACKING_URI": uri}}


def _predict(store, tmp_path, inp, out, *extra):
    return ["predict", "--model", "models:/nope@champion", "--input", inp, "--output", out, *extra]


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "relative path"])
def test_predict_refuses_to_write_over_its_input(store, tmp_path, how):
    inp = tmp_path / "x.jsonl"
    inp.write_text("a review of the soup\nanother one\n")
    out = {"same path": inp, "relative path": Path("x.jsonl")}.get(how, tmp_path / "y.jsonl")
    if how == "symlink":
        out.symlink_to(inp)
    elif how == "hard link":
        os.link(inp, out)
    cli_error(
        _predict(store, tmp_path, inp, out), ["is the input", "another file"], [inp], cwd=tmp_path, env=store["env"]
    )


def test_predict_model_uri_it_cannot_load_says_which_it_can(store, tmp_path):
    (tmp_path / "x.txt").write_text("soup\n")
    args = _predict(store, tmp_path, tmp_path / "x.txt", tmp_path / "o.jsonl")
    args[2] = "http://127.0.0.1:9/model"
    cli_error(
        args, ["--model http://127.0.0.1:9/model", "models:/<name>@<alias>", "runs:/"], cwd=tmp_path, env=store["env"]
    )
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("threshold", ["2", "-0.1", "nan", "1.0000001"])
def test_predict_threshold_outside_0_1(store, tmp_path, threshold):
    (tmp_path / "x.txt").write_text("soup\n")
    args = _predict(store, tmp_path, tmp_path / "x.txt", tmp_path / "o.jsonl", "--threshold", threshold)
    cli_error(args, ["--threshold", "[0, 1]"], cwd=tmp_path, env=store["env"])


def test_predict_reads_a_csv_field_over_128_kib(store, tmp_path):
    """A 1 MB review is read (the csv module's default limit is 128 KiB): the command gets as far as the model."""
    review = "the dumplings were good and " * 40_000  # 1.1 MB in one field
    (tmp_path / "x.csv").write_text(f'id,text\n1,"{review}"\n2,short\n')
    args = _predict(store, tmp_path, tmp_path / "x.csv", tmp_path / "o.jsonl")
    cli_error(
        args, ["cannot load the model", "models:/nope@champion"], [tmp_path / "x.csv"], cwd=tmp_path, env=store["env"]
    )


def test_labelled_csv_with_a_1_mb_review_is_read_whole(tmp_path):
    from albert_exp.data import read_labelled_csv

    review = "x" * (1 << 20) + " crispy tofu bao"
    (tmp_path / "train.csv").write_text(f'text,phrase\n"{review}",crispy tofu bao\nnice soup,soup\n')
    rows, _ = read_labelled_csv(tmp_path / "train.csv")
    assert [(i, len(t), p) for i, t, p in rows] == [(2, len(review), ["crispy tofu bao"]), (3, 9, ["soup"])]


# ---------------------------------------------------------------------------------------------- tpu-logs ingest


@pytest.fixture(scope="module")
def big_log(tmp_path_factory) -> Path:
    """A log whose parsing takes a few seconds (400k lines), so that a signal lands while the child parses."""
    from tests.tpu_logs_synth import SynthSpec, write_logs

    logs = write_logs(SynthSpec(num_train_steps=100_000, target_lines=400_000, seed=3), tmp_path_factory.mktemp("l"))
    return logs.files[0]


def _state(psutil, pid: int) -> str:
    try:
        return psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return "gone"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_ingest_parsing_process_ends_with_its_parent(tmp_path, big_log, sig):
    """kill -9: the kernel ends the parsing child with its parent (PR_SET_PDEATHSIG) at once, not after its
    parse; SIGTERM: the parent ends and reaps it (no zombie) before exiting."""
    psutil = pytest.importorskip("psutil")
    cmd = [sys.executable, "-m", "albert_exp", "tpu-logs", "ingest", str(big_log), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parent, kids, deadline = psutil.Process(proc.pid), [], time.time() + 60
    while time.time() < deadline and proc.poll() is None and not kids:
        kids = parent.children()
        time.sleep(0.01)
    assert kids, f"no parsing process seen (rc={proc.poll()}): {proc.stderr.read().decode()[-2000:]}"
    time.sleep(0.3)  # it is parsing now (~2 s of work left)
    assert _state(psutil, kids[0].pid) not in ("gone", psutil.STATUS_ZOMBIE)
    os.kill(proc.pid, sig)
    proc.wait(timeout=30)
    if sig == signal.SIGTERM:
        assert proc.returncode == 130, proc.stderr.read().decode()[-2000:]
        assert _state(psutil, kids[0].pid) == "gone", "the parent exited without reaping its parsing process"
    time.sleep(0.5)  # far less than the parse left to do
    # after kill -9 the child is adopted by init: "gone" once init reaps it, a zombie where init never does
    assert _state(psutil, kids[0].pid) in ("gone", psutil.STATUS_ZOMBIE)


# ---------------------------------------------------------------------------------------------- serving


def test_serving_chunks_limits_and_deadline(tiny_tokenizer, monkeypatch):
    """Texts go to the model in runs bounded by count and characters; a deadline stops scoring between runs;
    limits apply only inside MLflow's scoring server, with the documented defaults and env overrides."""
    import time

    from albert_exp import serving

    assert serving.chunks(["ab", "cd", "efgh", "i", "j", "k"], 3, 4) == [["ab", "cd"], ["efgh"], ["i", "j", "k"]]
    assert serving.chunks(["x" * 10, "y"], 5, 4) == [["x" * 10], ["y"]]  # a long text alone
    from tests.test_words_windows import _dish_tagger

    model = _dish_tagger(tiny_tokenizer, "bao")
    with pytest.raises(TimeoutError, match="stopped after 0 of 2 texts"):
        serving.extract(["a bao", "b"], model, tiny_tokenizer, max_seq_length=32, deadline=time.monotonic() - 1)
    assert (
        len(serving.extract(["a bao", "b"], model, tiny_tokenizer, max_seq_length=32, deadline=time.monotonic() + 60))
        == 2
    )
    monkeypatch.delenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", raising=False)
    assert serving.serving_limits() is None
    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "true")
    monkeypatch.delenv("ALBERT_EXP_SERVE_MAX_ROWS", raising=False)
    monkeypatch.delenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", raising=False)
    monkeypatch.setenv("ALBERT_EXP_SERVE_MAX_CHARS", "500")
    assert serving.serving_limits() == (1_000, 500, 60)
    monkeypatch.setenv("ALBERT_EXP_SERVE_MAX_ROWS", "lots")
    with pytest.raises(ValueError, match="ALBERT_EXP_SERVE_MAX_ROWS='lots'"):
        serving.serving_limits()


@pytest.fixture(scope="module")
def served_tagger(tmp_path_factory, tiny_tokenizer) -> dict:
    """A tiny random tagger logged as our phrase-extractor pyfunc (no training: the bounds are what is tested)."""
    import mlflow
    import torch
    from transformers import AlbertConfig, AlbertForTokenClassification

    from albert_exp.serving import log_phrase_extractor

    tmp = tmp_path_factory.mktemp("served")
    torch.manual_seed(0)
    kw = dict(embedding_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20)
    config = AlbertConfig(vocab_size=len(tiny_tokenizer), max_position_embeddings=32, num_labels=2, **kw)
    AlbertForTokenClassification(config).save_pretrained(str(tmp / "hf"))
    tiny_tokenizer.save_pretrained(str(tmp / "hf"))
    with tracking_in(tmp) as uri, mlflow.start_run():
        info = log_phrase_extractor(tmp / "hf", ["We loved the crispy tofu bao."], max_seq_length=32)
    return {"model_uri": info.model_uri, "tracking_uri": uri, "tmp": tmp}


def test_served_model_bounds_a_request(served_tagger, monkeypatch):
    """`mlflow models serve` over our pyfunc, on loopback: rows and characters per request are bounded (settings
    read at the server's start); over either, a 400 that says the limit and the variable that raises it."""
    from tests.conftest import post_rows as post
    from tests.conftest import served_model

    monkeypatch.setenv("ALBERT_EXP_SERVE_MAX_ROWS", "4")
    monkeypatch.setenv("ALBERT_EXP_SERVE_MAX_CHARS", "2000")
    t = served_tagger
    with served_model(t["model_uri"], t["tracking_uri"], t["tmp"], timeout_s=180) as port:
        status, answer = post(port, [["good soup"]] * 5)
        assert status == 400 and "5 rows, at most 4 per request" in answer["message"], (status, answer)
        assert "ALBERT_EXP_SERVE_MAX_ROWS" in answer["message"]
        status, answer = post(port, [["a" * 1500], ["b" * 501]])
        assert status == 400 and "2,001 characters, at most 2,000" in answer["message"], (status, answer)
        assert "ALBERT_EXP_SERVE_MAX_CHARS" in answer["message"]
        status, answer = post(port, [["We loved the crispy tofu bao."], ["x " * 950]])  # within the limits: scored
        assert status == 200 and len(answer["predictions"]) == 2, (status, answer)


# ---------------------------------------------------------------------------------------------- Ray's secrets


def test_local_ray_writes_its_auth_token_private(tmp_path):
    """`pretraining-data --executor ray` without --address starts Ray (ray_session(None)), which authenticates
    with a token it writes to ~/.ray/auth_token: that file must be readable by its owner only."""
    pytest.importorskip("ray")
    code = "from albert_exp.pretraining_data import ray_session\nwith ray_session(None) as ray:\n"
    code += "    assert ray.get(ray.remote(lambda: 1).remote()) == 1\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path), "RAY_TMPDIR": "/tmp"}
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(k, None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    token = tmp_path / ".ray" / "auth_token"
    assert len(token.read_text().strip()) == 64  # the token Ray used: a 256-bit hex string
    assert oct(token.stat().st_mode & 0o777) == oct(0o600) and oct(token.parent.stat().st_mode & 0o777) == oct(0o700)
