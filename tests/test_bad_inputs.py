"""Bad input through the CLI, as a user meets it (issue #14): every case runs `python -m albert_exp ...` as a
subprocess and must exit 2 with exactly one line on stderr that names the file or key and says what to do, no
traceback, nothing half-written, and the previous good output of the stage untouched.

Good outputs are made once per module (a small toy corpus, its vocabulary, pretraining data, a tiny HF model and
its TF conversion) in one MLflow store that every case shares; each case then breaks one thing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, stage_runner, tracking_in

VOCAB = 300


def _snapshot(*dirs: Path) -> dict[str, str]:
    """Every file under the dirs (hidden ones too; a file given itself) with the sha256 of its bytes."""
    out = {}
    for d in dirs:
        for p in [d] if d.is_file() else sorted(d.rglob("*")) if d.exists() else []:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """Good outputs of corpus, vocab, pretraining-data and convert, and broken variants of their inputs."""
    import torch

    from albert_exp.config import load_config
    from albert_exp.convert import hf, mapping, mark_output
    from albert_exp.tracking import write_results

    root = tmp_path_factory.mktemp("bad")
    with tracking_in(root):
        cfg = load_config(
            None,
            [
                f"workdir={root / 'w'}",
                "name=bad-inputs",
                "corpus.toy=true",
                "corpus.toy_documents=120",
                *[f"corpus.toy_{s}_rows=40" for s in ("train", "val", "test")],
                f"vocab.vocab_size={VOCAB}",
                "vocab.character_coverage=1.0",
                "pretraining_data.dupe_factor=2",
                "pretraining_data.workers=1",
                "pretrain.max_seq_length=32",
                "pretrain.max_predictions_per_seq=5",
            ],
        )
        stage_runner("corpus")(cfg)
        stage_runner("vocab")(cfg)
        stage_runner("pretraining-data")(cfg)
    w = root / "w"
    # A tiny HF ALBERT with this vocabulary, and its TF checkpoint (a previous good `convert` output).
    torch.manual_seed(0)
    kw = dict(vocab_size=VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    model = hf.build_model({**kw, "intermediate_size": 37, "max_position_embeddings": 32, "hidden_act": "gelu_new"})
    model.save_pretrained(str(root / "hf"))
    # A previous `convert` output (its files stand in for a TF checkpoint: the failures below happen before it
    # is read; the truncated-checkpoint test makes a real one).
    (root / "tf").mkdir()
    (root / "tf" / "model.ckpt-0.index").write_bytes(b"stand-in")
    (root / "tf" / "albert_config.json").write_text(json.dumps(mapping.google_from_hf(model.config)))
    write_results(root / "tf", {"direction": "hf-to-tf", "checkpoint": str(root / "tf" / "model.ckpt-0")})
    mark_output(root / "tf")
    return {"root": root, "w": w, "env": {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}}


def run_bad(good, tmp_path, args, expect, intact=(), limit_fsize=None):
    """Run the CLI; assert the bad-input contract. `expect`: substrings the error line must contain (the file or
    key, and a word of the fix); `intact`: directories whose files must be exactly as before."""
    if args[0] != "convert":  # the fixture's MLflow experiment (a new one makes MLflow log a line on stderr)
        args = [*args, "--set", "name=bad-inputs"]
    return cli_error(args, expect, intact, cwd=good["root"], env=good["env"], limit_fsize=limit_fsize)


def cli_error(args, expect, intact=(), *, cwd, env, limit_fsize=None):
    """`python -m albert_exp ARGS` in cwd with env added: exit 2, one `error:` line holding every `expect` and a
    "(what to do)", no traceback, and every file under `intact` (dirs or files) byte-identical afterwards."""
    before = _snapshot(*intact)
    env = {**os.environ, **env, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}

    def limits():
        if limit_fsize:  # a full disk without root: writes past the limit fail with EFBIG
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_fsize, limit_fsize))

    out = subprocess.run(
        [sys.executable, "-m", "albert_exp", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
        preexec_fn=limits,
    )
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, f"exit {out.returncode}\n{out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one error line, got:\n{out.stderr}"
    for part in expect:
        assert str(part) in lines[0], f"{part!r} not in: {lines[0]}"
    assert "(" in lines[0], f"no 'what to do' in: {lines[0]}"
    assert _snapshot(*intact) == before, "a previous good output was changed"
    return lines[0]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------- config values


@pytest.mark.parametrize(
    "args, key",
    [
        (["pretrain", "--learning-rate", "-1"], "pretrain.learning_rate"),
        (["pretrain", "--num-train-steps", "-5"], "pretrain.num_train_steps"),
        (["pretrain", "--set", "pretrain.learning_rate=0"], "pretrain.learning_rate"),
        (["finetune", "--set", "model.num_attention_heads=5"], "model.hidden_size"),
    ],
)
def test_bad_config_values(good, tmp_path, args, key):
    run_bad(good, tmp_path, args, [key, "bad value"])


# ---------------------------------------------------------------------------------------------- pretraining-data


def _manifest_like(good, d: Path, shard_bytes: bytes) -> Path:
    """A corpus manifest in `d` whose one shard holds `shard_bytes`."""
    d.mkdir(parents=True)
    (d / "shard-00000.txt").write_bytes(shard_bytes)
    m = json.loads((good["w"] / "corpus" / "manifest.json").read_text())
    m["shards"] = [{**m["shards"][0], "path": "shard-00000.txt", "sha256": ""}]
    (d / "manifest.json").write_text(json.dumps(m))
    return d / "manifest.json"


def _pd(good, manifest, *extra):
    tok = good["w"] / "vocab" / "tokenizer"
    args = ["pretraining-data", "--workdir", good["w"], "--input", manifest, "--tokenizer-dir", tok]
    return [*args, *extra]


@pytest.mark.parametrize(
    "name, content, expect",
    [
        ("corpus.txt", "the soup was good .\nwe came back .\n", "not a corpus manifest (not valid JSON"),
        ("manifest.json", "", "not a corpus manifest (empty file)"),
        ("manifest.json", '{"shards": [{"path": "shard-0', "not a corpus manifest (not valid JSON"),
        ("manifest.json", '{"files": ["a.txt"]}', "not a corpus manifest (no list of shards"),
        ("manifest.json", '{"shards": []}', "lists no shards"),
        ("manifest.json", '{"shards": [{"path": "gone.txt"}]}', "shard listed in the manifest is missing"),
    ],
)
def test_pretraining_data_bad_manifest(good, tmp_path, name, content, expect):
    (tmp_path / name).write_text(content)
    out = good["w"] / "pretraining_data"
    line = run_bad(good, tmp_path, _pd(good, tmp_path / name), [expect, "corpus"], intact=[out])
    assert str(tmp_path) in line


@pytest.mark.parametrize(
    "shard, expect",
    [
        ("good line é\n".encode("latin-1") + b"\n", "not UTF-8"),
        (b"\n\n  \n", "has no text"),
    ],
)
def test_pretraining_data_bad_shard(good, tmp_path, shard, expect):
    manifest = _manifest_like(good, tmp_path / "corpus", shard)
    out = good["w"] / "pretraining_data"
    run_bad(good, tmp_path, _pd(good, manifest), [expect, tmp_path / "corpus" / "shard-00000.txt"], intact=[out])
    assert not list(out.glob(".*tmp*")), "a temporary shard was left behind"


def test_pretraining_data_help_says_input_is_the_corpus_manifest():
    cmd = [sys.executable, "-m", "albert_exp", "pretraining-data", "--help"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "--input INPUT" in out and "manifest.json that `albert-exp corpus` wrote" in " ".join(out.split())


def test_pretraining_data_missing_tokenizer(good, tmp_path):
    args = [*_pd(good, good["w"] / "corpus" / "manifest.json")[:-2], "--tokenizer-dir", tmp_path / "no_tok"]
    run_bad(good, tmp_path, args, ["tokenizer", tmp_path / "no_tok"], intact=[good["w"] / "pretraining_data"])


def test_pretraining_data_full_disk(good, tmp_path):
    """A full disk (a 64 KB tmpfs as root; else writes past a file-size limit, which fail the same way): one
    line naming the file, and no shard or manifest left."""
    disk = tmp_path / "disk"  # the output and its `.partial` staging sibling both live on the small disk
    disk.mkdir()
    out = disk / "small"
    manifest = good["w"] / "corpus" / "manifest.json"
    args = _pd(good, manifest, "--output-dir", out, "--dupe-factor", "40")
    mounted = os.geteuid() == 0 and _mount(disk, "size=64k")
    try:
        if mounted:
            line = run_bad(good, tmp_path, args, ["No space left on device", "free disk space"])
        else:
            limit = (good["root"] / "mlflow.db").stat().st_size + 2_000_000  # MLflow's store must still fit
            args[args.index("40")] = "400"  # ... while the shard does not
            line = run_bad(good, tmp_path, args, ["File too large", "limit"], limit_fsize=limit)
        assert str(out) in line
        assert not _running(good), "a failed command left its run RUNNING"
        left = [p.relative_to(disk) for p in disk.rglob("*") if p.is_file()]
        # only the staging dir's run record (which MLflow run a rerun reattaches to) may stay
        assert not [p for p in left if p.name != "run.json"], f"a partial output was left: {left}"
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)


def _running(good) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(good["env"]["MLFLOW_TRACKING_URI"])
    exps = [e.experiment_id for e in client.search_experiments()]
    return [r.info.run_id for r in client.search_runs(exps, "attributes.status = 'RUNNING'")]


def _mount(path: Path, options: str) -> bool:
    """A tmpfs on `path` (root only; False when the machine does not allow it)."""
    cmd = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]
    return subprocess.run(cmd, capture_output=True).returncode == 0


@contextlib.contextmanager
def _read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody can write to: a read-only mount as root (root writes through permissions), else 0555."""
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = os.geteuid() == 0 and _mount(ro, "ro,size=64k")
    if os.geteuid() == 0 and not mounted:
        pytest.skip("root without mount: a read-only directory cannot be made")
    if not mounted:
        ro.chmod(0o555)
    try:
        yield ro
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)], check=True)
        ro.chmod(0o755)


def test_pretraining_data_read_only_output(good, tmp_path):
    with _read_only_dir(tmp_path) as ro:
        args = _pd(good, good["w"] / "corpus" / "manifest.json", "--output-dir", ro / "out")
        run_bad(good, tmp_path, args, [ro / "out", "elsewhere"])


def _ft(good, workdir: Path) -> list:
    """A one-epoch fine-tune of a tiny model on the fixture's toy split, its outputs under `workdir`."""
    w = good["w"]
    sets = [f"finetune.{s}_csv={w / 'corpus' / f'{s}.csv'}" for s in ("train", "val", "test")]
    sets += ["stages=[finetune]", "finetune.epochs=1", "finetune.min_steps=0", "finetune.max_train_rows=64"]
    sets += ["model.embedding_size=16"]
    sets += ["model.hidden_size=32"]
    sets += ["model.num_hidden_layers=1", "model.num_attention_heads=2", "model.intermediate_size=37"]
    args = ["finetune", "--workdir", workdir, "--tokenizer-dir", w / "vocab" / "tokenizer"]
    return [*args, *[x for s in sets for x in ("--set", s)]]


def test_finetune_full_disk(good, tmp_path):
    """Fine-tuning's first checkpoint does not fit: one line naming the file, no partial model left behind."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not (os.geteuid() == 0 and _mount(disk, "size=64k")):
        pytest.skip("a full disk needs root and mount here (a file-size limit would also stop MLflow's store)")
    try:
        line = run_bad(good, tmp_path, _ft(good, disk), ["No space left on device", "free disk space"])
        assert str(disk) in line
        left = [p.relative_to(disk) for p in disk.rglob("*") if p.is_file()]
        assert not [p for p in left if p.suffix in (".safetensors", ".pt", ".bin")], f"partial model left: {left}"
        assert not list(disk.rglob("best_model")) and not list(disk.rglob("*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_finetune_read_only_workdir(good, tmp_path):
    with _read_only_dir(tmp_path) as ro:
        run_bad(good, tmp_path, _ft(good, ro / "w"), [ro / "w", "elsewhere"])


# ---------------------------------------------------------------------------------------------- vocab


def _vocab_workdir(good, tmp_path: Path, shard: bytes | None = None, manifest_text: str | None = None) -> Path:
    """A workdir holding a copy of the good vocabulary (its link and output) and a broken corpus that says it is
    complete (its results.json): the vocabulary stage reads it and must say what is wrong with it."""
    w = tmp_path / "w"
    link = good["w"] / "vocab"
    w.mkdir()
    shutil.copytree(link.resolve(), w / link.resolve().name)
    (w / "vocab").symlink_to(link.resolve().name)
    if shard is not None:
        _manifest_like(good, w / "corpus", shard)
    else:
        (w / "corpus").mkdir(parents=True)
        (w / "corpus" / "manifest.json").write_text(manifest_text or "")
    (w / "corpus" / "results.json").write_text('{"stage": "corpus", "key": "broken", "run_id": null}')
    return w


def test_vocab_empty_manifest(good, tmp_path):
    w = _vocab_workdir(good, tmp_path, manifest_text="")
    run_bad(good, tmp_path, ["vocab", "--workdir", w], [w / "corpus" / "manifest.json", "empty"], [w / "vocab"])


def test_vocab_non_utf8_shard(good, tmp_path):
    w = _vocab_workdir(good, tmp_path, shard="un café\n".encode("latin-1"))
    run_bad(good, tmp_path, ["vocab", "--workdir", w], [w / "corpus" / "shard-00000.txt", "UTF-8"], [w / "vocab"])


def test_vocab_size_below_the_characters(good, tmp_path):
    w = _vocab_workdir(good, tmp_path, shard="".join(chr(0x4E00 + i) for i in range(300)).encode() + b"\n")
    args = ["vocab", "--workdir", w, "--vocab-size", "40", "--character-coverage", "1.0"]
    run_bad(good, tmp_path, args, ["vocab.vocab_size", "distinct characters"], [w / "vocab"])


def test_vocab_size_the_corpus_cannot_give_stops_unless_allowed(good, tmp_path):
    """SentencePiece would silently make a smaller vocabulary: say what was asked and what is possible."""
    w = _vocab_workdir(good, tmp_path, shard=b"a few words only\nand a few more\n")
    args = ["vocab", "--workdir", w, "--vocab-size", "100000", "--character-coverage", "1.0"]
    line = run_bad(good, tmp_path, args, ["vocab.vocab_size", "100000", "hard_vocab_limit=false"], [w / "vocab"])
    assert "at most" in line


def test_pretraining_data_length_that_pretraining_cannot_read_is_refused_at_load(good, tmp_path):
    args = _pd(good, good["w"] / "corpus" / "manifest.json", "--max-seq-length", "16")
    args += ["--set", "pretrain.max_seq_length=32"]
    run_bad(good, tmp_path, args, ["pretraining_data.max_seq_length", "16 vs 32"], [good["w"] / "pretraining_data"])


@pytest.mark.parametrize("what", ["garbage", "missing"])
def test_vocab_from_spm_that_is_not_one(good, tmp_path, what):
    w = _vocab_workdir(good, tmp_path, manifest_text="{}")
    spm = tmp_path / "spiece.model"
    if what == "garbage":
        spm.write_bytes(os.urandom(3000))
    run_bad(good, tmp_path, ["vocab", "--workdir", w, "--from-spm", spm], [spm, "SentencePiece"], [w / "vocab"])


# ---------------------------------------------------------------------------------------------- convert


def _hf_variant(good, tmp_path: Path, what: str) -> Path:
    d = _copy(good["root"] / "hf", tmp_path / f"hf_{what}")
    weights, config = d / "model.safetensors", d / "config.json"
    if what == "no_config":
        config.unlink()
    elif what == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif what == "garbage":
        weights.write_bytes(os.urandom(4096))
    elif what in ("hidden", "heads"):
        c = json.loads(config.read_text())
        c.update({"hidden_size": 64} if what == "hidden" else {"num_attention_heads": 5})
        config.write_text(json.dumps(c))
    return d


@pytest.mark.parametrize(
    "what, expect",
    [
        ("missing", "model directory not found"),
        ("no_config", "no config.json"),
        ("truncated", "model.safetensors is truncated"),
        ("garbage", "model.safetensors is truncated"),
        ("hidden", "config.json implies"),
        ("heads", "not divisible by num_attention_heads"),
    ],
)
def test_convert_bad_hf_model(good, tmp_path, what, expect):
    src = tmp_path / "nowhere" if what == "missing" else _hf_variant(good, tmp_path, what)
    out = good["root"] / "tf"  # a previous good conversion: must survive the failed one
    run_bad(good, tmp_path, ["convert", "hf-to-tf", "--source", src, "--out", out], [expect, src], [out])
    assert not list(out.parent.glob(".tf.*")), "a staging directory was left behind"


def _tf_variant(good, tmp_path: Path, **config) -> Path:
    d = _copy(good["root"] / "tf", tmp_path / "tf")
    if config:
        c = json.loads((d / "albert_config.json").read_text())
        (d / "albert_config.json").write_text(json.dumps({**c, **config}))
    return d / "model.ckpt-0"


@pytest.mark.slow  # TensorFlow is imported twice (~20 s)
def test_convert_truncated_tf_data(good, tmp_path):
    from albert_exp.convert import hf

    prefix = Path(hf.hf_to_tf(good["root"] / "hf", tmp_path / "tf")["checkpoint"])
    data = next(prefix.parent.glob("model.ckpt-0.data-*"))
    data.write_bytes(data.read_bytes()[:1000])
    out = good["root"] / "tf"
    run_bad(good, tmp_path, ["convert", "tf-to-hf", "--source", prefix, "--out", out], [prefix, "truncated"], [out])


@pytest.mark.parametrize(
    "change, given, expect",
    [
        ({}, {"num_attention_heads": 4}, "num_attention_heads is 4, but the albert_config.json beside"),
        ({}, {"num_hidden_layers": 3}, "num_hidden_layers is 3"),
        ({}, {"hidden_act": "relu"}, "hidden_act is 'relu'"),
        ({"hidden_act": "gelu_new"}, None, "'hidden_act' is 'gelu_new'"),
        ({"num_attention_heads": 5}, None, "not divisible by num_attention_heads 5"),
    ],
)
def test_convert_tf_config_that_does_not_describe_the_checkpoint(good, tmp_path, change, given, expect):
    prefix = _tf_variant(good, tmp_path, **change)
    out = good["root"] / "tf"
    args = ["convert", "tf-to-hf", "--source", prefix, "--out", out]
    if given is not None:
        cfg = json.loads((prefix.parent / "albert_config.json").read_text())
        (tmp_path / "given.json").write_text(json.dumps({**cfg, **given}))
        args += ["--albert-config", tmp_path / "given.json"]
    run_bad(good, tmp_path, args, [expect, "albert_config"], [out])


# ---------------------------------------------------------------------------------------------- models in stages


@pytest.mark.parametrize(
    "what",
    ["missing", pytest.param("no_config", marks=pytest.mark.slow), pytest.param("garbage", marks=pytest.mark.slow)],
)
def test_finetune_bad_model_dir(good, tmp_path, what):
    """A --model-dir that does not exist is reported at once: never looked up on the Hugging Face Hub."""
    src = tmp_path / "nowhere" if what == "missing" else _hf_variant(good, tmp_path, what)
    tok = good["w"] / "vocab" / "tokenizer"
    args = ["finetune", "--workdir", good["w"], "--model-dir", src, "--tokenizer-dir", tok]
    line = run_bad(good, tmp_path, args, [src, "model"], [good["w"] / "vocab"])
    assert not (good["w"] / "finetune").exists() or "best_model" not in os.listdir(good["w"] / "finetune")
    assert what != "missing" or "finetune.model_dir" in line


def test_pretrain_init_from_a_truncated_model(good, tmp_path):
    src = _hf_variant(good, tmp_path, "truncated")
    records = sorted((good["w"] / "pretraining_data").glob("*.tfrecord"))
    args = ["pretrain", "--workdir", good["w"], "--input", records[0], "--init-from", src]
    args += ["--output-dir", tmp_path / "pt", "--max-seq-length", "32", "--max-predictions-per-seq", "5"]
    run_bad(good, tmp_path, args, [src, "truncated"])
    assert not (tmp_path / "pt" / "checkpoints").exists()


def test_tune_bad_csv_is_one_line_before_any_trial(good, tmp_path):
    (tmp_path / "train.csv").write_text("review,dish\nnice soup,soup\n")
    args = ["tune", "--workdir", good["w"], "--set", f"finetune.train_csv={tmp_path / 'train.csv'}"]
    args += ["--set", f"tune.storage=sqlite:///{tmp_path / 'optuna.db'}", "--set", "stages=[tune]"]
    run_bad(good, tmp_path, args, [tmp_path / "train.csv", "missing column 'text'"])
