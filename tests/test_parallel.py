"""`main --jobs N` (issue 28): stages side by side in their own processes, the same results as one at a time, a
failing stage that stops only its dependents, and a SIGTERM that leaves nothing RUNNING. Through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.test_reruns import TINY, cli, runs


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    return tmp_path


def _figures(results: dict) -> dict:
    """Every stage's metrics (test/, val/, the pretraining losses) and the champion, as results.json holds them."""
    out = {}
    for stage in ("pretrain", "finetune", "scratch", "baseline"):
        r = results[stage]
        out[stage] = {k: v for k, v in r.items() if k.split("/")[0] in ("test", "val", "loss") or k == "best"}
    out["champion"] = results["promote"]["champion_metrics"]
    return out


@pytest.mark.slow  # two whole `main`s (~3 min on 2 cores); the failure and SIGTERM cases below run by default
def test_two_jobs_give_the_same_metrics_as_one(tmp_path):
    figures = []
    for jobs in ("1", "2"):
        w = tmp_path / f"jobs{jobs}"
        w.mkdir()
        (w / "tiny.yaml").write_text(TINY)
        out = cli(w, "main", "--config", "tiny.yaml", "--jobs", jobs)
        assert ("started (log:" in out.stdout) == (jobs == "2")
        figures.append(_figures(json.loads((w / "runs" / "results.json").read_text())))
    assert figures[0] == figures[1]


def test_a_failing_stage_stops_its_dependents_and_lets_the_others_finish(tiny):
    (tiny / "runs").mkdir()
    (tiny / "runs" / "baseline").write_text("a user's file where the baseline's output goes\n")
    out = cli(tiny, "main", "--config", "tiny.yaml", "--jobs", "2", check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert "stage `baseline` failed" in line and "did not create" in line
    assert "baseline: FAILED" in out.stdout
    assert (tiny / "runs" / "finetune" / "results.json").is_file(), "the pretrained side finished"
    assert (tiny / "runs" / "baseline").read_text().startswith("a user's file")
    assert all(r.info.status != "RUNNING" for r in runs(tiny))


def test_sigterm_stops_every_stage_and_a_rerun_resumes(tiny):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tiny / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [sys.executable, "-m", "albert_exp", "main", "--config", "tiny.yaml", "--jobs", "2"]
    proc = subprocess.Popen(cmd, cwd=tiny, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (tiny / "runs" / "logs" / "pretrain.log").is_file():
        assert proc.poll() is None and time.time() < deadline, "finished or stuck before pretraining started"
        time.sleep(0.1)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in err, err[-2000:]
    assert all(r.info.status != "RUNNING" for r in runs(tiny)), [(r.info.run_name, r.info.status) for r in runs(tiny)]
    out = cli(tiny, "main", "--config", "tiny.yaml", "--jobs", "2")
    assert "corpus: reusing run" in out.stdout and json.loads((tiny / "runs" / "results.json").read_text())["promote"]
    assert all(r.info.status != "RUNNING" for r in runs(tiny))


def test_processes_side_by_side_share_the_cores(monkeypatch):
    """N processes that each take every core would run N x cores OpenMP threads (on 2 cores, two toy fine-tunings
    took 2 min an epoch instead of 12 s): each gets its share, and a stage with torch_threads 0 runs alone."""
    from albert_exp.config import load_config
    from albert_exp.devices import side_by_side_env
    from albert_exp.scheduler import default_jobs

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert side_by_side_env(1, 2)["OMP_NUM_THREADS"] == "4"
    assert side_by_side_env(0, 16)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice is kept
    assert "OMP_NUM_THREADS" not in side_by_side_env(1, 2)
    both = ["pretrain.torch_threads=1", "finetune.torch_threads=1"]
    assert default_jobs(load_config(None, both)) == 8
    assert default_jobs(load_config(None, [both[0], "finetune.torch_threads=0"])) == 1


def test_a_pool_worker_takes_its_share_of_the_cores(monkeypatch, tmp_path):
    """The curve's workers are spawned interpreters that import torch before their setup runs: the share is set
    on torch itself, not only in the environment."""
    from albert_exp.pool import in_pool

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    got = in_pool(_threads, {0: (), 1: ()}, 2, logs=tmp_path, prefix="t", parent_run_id=None)
    share = max(1, (os.cpu_count() or 1) // 2)
    assert got == {0: share, 1: share}


def _threads() -> int:
    import torch

    return torch.get_num_threads()
