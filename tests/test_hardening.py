"""Hardening that needs real processes: nothing listens beyond loopback, no orphans after kill -9, the
promotion lock is never broken while its holder lives (issue #14)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def test_local_ray_instance_listens_on_loopback_only(tmp_path):
    """`pretraining-data --executor ray` without --address starts Ray through ray_session(None): every socket
    that Ray's processes (GCS, raylet, workers, agents, the driver) listen on must be a loopback address."""
    pytest.importorskip("ray")
    psutil = pytest.importorskip("psutil")
    del psutil
    code = textwrap.dedent(
        """
        import json, os, psutil
        from albert_exp.pretraining_data import ray_session
        with ray_session(None) as ray:
            ray.get(ray.remote(lambda: 1).remote())  # a worker is up too
            me = psutil.Process()
            ours = {me.pid} | {c.pid for c in me.children(recursive=True)}
            socks = [
                [c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name()]
                for c in psutil.net_connections("inet")
                if c.status == psutil.CONN_LISTEN and c.pid in ours
            ]
        print(json.dumps(socks))
        """
    )
    env = {**_env(), "RAY_TMPDIR": "/tmp"}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    socks = json.loads(out.stdout.strip().splitlines()[-1])
    names = {name for _, _, name in socks}
    assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), socks
    exposed = [s for s in socks if s[0] not in LOOPBACK]
    assert not exposed, f"listening beyond loopback: {exposed}"


@pytest.fixture(scope="module")
def corpus_and_tokenizer(tmp_path_factory) -> tuple[Path, Path]:
    from albert_exp import toy
    from albert_exp.corpus_files import ShardWriter
    from albert_exp.vocab import build_hf_tokenizer, normalize, train_sentencepiece

    root = tmp_path_factory.mktemp("pd")
    docs = list(toy.pretraining_documents(0, 400))
    lines = [normalize(s, lowercase=True, keep_accents=False) for d in docs for s in d]
    train_sentencepiece(lines, root / "spiece", 300, "unigram", 1.0)
    build_hf_tokenizer(root / "spiece.model", root / "tokenizer", lowercase=True, keep_accents=False)
    writer = ShardWriter(root / "corpus", 800)
    for d in docs:
        writer.add(d)
    writer.finish({"source": "test"})
    return root / "corpus" / "manifest.json", root / "tokenizer"


def _cmdline(psutil, proc) -> str:
    """A child's command line; "" for one that ended meanwhile (a short-lived `git` of the code version, say,
    is a zombie until its parent reaps it)."""
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def test_kill_9_of_pretraining_data_leaves_no_orphaned_workers(tmp_path, corpus_and_tokenizer):
    psutil = pytest.importorskip("psutil")
    manifest, tok = corpus_and_tokenizer
    cmd = [
        sys.executable,
        "-m",
        "albert_exp",
        "pretraining-data",
        "--workdir",
        str(tmp_path / "w"),
        "--input",
        str(manifest),
        "--tokenizer-dir",
        str(tok),
        "--workers",
        "2",
        "--dupe-factor",
        "40",
    ]
    env = {**_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parent = psutil.Process(proc.pid)
    deadline = time.time() + 120
    workers: list = []
    while time.time() < deadline and proc.poll() is None:
        kids = parent.children(recursive=True)
        workers = [k for k in kids if "spawn_main" in _cmdline(psutil, k)]
        if len(workers) >= 2:
            break
        time.sleep(0.1)
    assert len(workers) >= 2, f"no pool workers seen (rc={proc.poll()}): {proc.stderr.read().decode()[-2000:]}"
    family = parent.children(recursive=True)  # the workers and multiprocessing's resource tracker
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(family, timeout=20)
    assert not alive, f"left running after kill -9 of the parent: {[(p.pid, p.cmdline()[-2:]) for p in alive]}"


def test_promotion_lock_is_never_broken_while_its_holder_lives(tmp_path, mlflow_store):
    import socket as sock

    from mlflow.tracking import MlflowClient

    from albert_exp.errors import UserError
    from albert_exp.promote import registry_lock
    from albert_exp.tracking import Registry

    client, registry = MlflowClient(), Registry()
    lock = "m.promotion-lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        old = f"{time.time() - 3600:.3f}"  # an hour-old lock whose holder is alive on this host
        tags = {"owner": "other", "host": sock.gethostname(), "pid": str(holder.pid), "since": old, "heartbeat": old}
        client.create_registered_model(lock, tags=tags)
        with pytest.raises(UserError, match="holds the lock"):
            with registry_lock(registry, "m", timeout_s=1.0, stale_s=0.1):
                pass
        assert client.get_registered_model(lock).tags["owner"] == "other"
    finally:
        holder.kill()
        holder.wait()
    with registry_lock(registry, "m", timeout_s=5.0, stale_s=0.1) as owner:  # its holder is dead now: broken
        assert client.get_registered_model(lock).tags["owner"] == owner
        time.sleep(0.5)  # several heartbeats: another host's breaker (stale_s 0.1) would see a fresh one
        beat = float(client.get_registered_model(lock).tags["heartbeat"])
        assert time.time() - beat < 0.5
    assert not client.search_registered_models(f"name = '{lock}'")  # released

    # Another host's lock: broken only once its heartbeat is older than stale_s.
    fresh = f"{time.time():.3f}"
    client.create_registered_model(lock, tags={"owner": "far", "host": "elsewhere", "pid": "1", "heartbeat": fresh})
    with pytest.raises(UserError):
        with registry_lock(registry, "m", timeout_s=0.5, stale_s=60):
            pass
    with registry_lock(registry, "m", timeout_s=5.0, stale_s=0.2):
        # Released only by its holder: a lock that someone else took over meanwhile is left alone.
        client.delete_registered_model(lock)
        client.create_registered_model(lock, tags={"owner": "usurper", "host": "elsewhere", "heartbeat": fresh})
    assert client.get_registered_model(lock).tags["owner"] == "usurper"


def test_every_hugging_face_load_goes_through_hf_local():
    """No `from_pretrained` outside albert_exp/hf_local.py, which passes local_files_only=True and checks the
    directory first: a missing path is an error, never a Hugging Face Hub lookup."""
    import ast

    offenders = []
    for path in sorted((ROOT / "albert_exp").rglob("*.py")):
        if path.name != "hf_local.py":
            tree = ast.parse(path.read_text())
            calls = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "from_pretrained"]
            offenders += [f"{path.relative_to(ROOT)}:{n.lineno}" for n in calls]
    assert not offenders, f"load through albert_exp.hf_local instead: {offenders}"
    tree = ast.parse((ROOT / "albert_exp" / "hf_local.py").read_text())
    loads = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "from_pretrained"]
    local = [
        any(k.arg == "local_files_only" and getattr(k.value, "value", None) is True for k in n.keywords) for n in loads
    ]
    assert len(loads) == 3 and all(local)


def test_kill_9_of_tpu_logs_ingest_leaves_no_parsing_process(tmp_path):
    """The parsing process of `tpu-logs ingest` (forked from the command) sends a result bigger than a pipe holds
    while the parent is still loading MLflow; a parent killed with -9 then must not leave it waiting forever."""
    psutil = pytest.importorskip("psutil")
    from tests.tpu_logs_synth import SynthSpec, write_logs

    logs = write_logs(SynthSpec(num_train_steps=100_000, target_lines=100_000, seed=3), tmp_path / "logs")
    cmd = [sys.executable, "-m", "albert_exp", "tpu-logs", "ingest", str(logs.files[0]), "--no-progress"]
    env = {**_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parent = psutil.Process(proc.pid)
    deadline = time.time() + 60
    kids: list = []
    while time.time() < deadline and proc.poll() is None and not kids:
        kids = [k for k in parent.children() if "tpu-logs" in _cmdline(psutil, k)]  # forked: the same command
        time.sleep(0.02)
    assert kids, f"no parsing process seen (rc={proc.poll()}): {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(kids, timeout=30)
    assert not alive, f"left running after kill -9 of the parent: {[p.pid for p in alive]}"
