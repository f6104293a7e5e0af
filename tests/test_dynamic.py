"""Dynamic masking (pretraining_data.mode: dynamic): documents stored once, instances drawn in the loader.

The statistics match the static path's (same planner and kernel, one pass per epoch), and every micro-batch
is a pure function of (seed, index): the same tensors whatever the number of loader workers or ranks."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_pretraining_data import SEQ, _cfg, _corpus, _make, _toy_docs, tok_dir  # noqa: F401

EPOCHS = 8
DYN = ("pretraining_data.mode=dynamic", "pretraining_data.block_lines=300")


def make_dynamic(tmp: Path, manifest: Path, tok: Path, *extra: str) -> dict:
    """The stage in dynamic mode without MLflow: build_tasks + execute + write_manifest."""
    from albert_exp.pretraining_data import build_tasks, execute, write_manifest

    cfg = _cfg(tmp, manifest, tok, "pretraining_data.mode=dynamic", *extra)
    tasks, out, info = build_tasks(cfg)
    entries = execute(tasks, "local", 1, None, info["lines"])
    totals = write_manifest(cfg, out, info, entries, tasks[0].params)
    return {"manifest": str(out / "manifest.json"), "output_dir": str(out), "totals": totals}


@pytest.fixture(scope="module")
def data(tmp_path_factory, tok_dir):  # noqa: F811
    tmp = tmp_path_factory.mktemp("dyn")
    manifest = _corpus(tmp / "corpus", _toy_docs(300), lines_per_shard=700)
    blocks = DYN[1]
    dyn = make_dynamic(tmp / "d", manifest, tok_dir, blocks)
    static = _make(tmp / "s", manifest, tok_dir, f"pretraining_data.dupe_factor={EPOCHS}", blocks)
    return {"dynamic": dyn, "static": static, "corpus": manifest, "tmp": tmp}


def test_documents_are_stored_once_in_arrow_with_offsets(data):
    import pyarrow as pa

    m = json.loads(Path(data["dynamic"]["manifest"]).read_text())
    assert m["mode"] == "dynamic" and len(m["shards"]) >= 2
    static_bytes = data["static"]["totals"]["bytes"]
    assert m["totals"]["bytes"] * 10 < static_bytes  # static: EPOCHS masked copies; here the tokens once
    f = Path(data["dynamic"]["output_dir"]) / m["shards"][0]["path"]
    table = pa.ipc.open_file(pa.memory_map(str(f))).read_all()
    assert table.schema.field("documents").type == pa.list_(pa.list_(pa.uint16()))
    assert table.num_rows == m["shards"][0]["documents"]
    # Resumable per shard like the static stage (sidecar + checksum); the same bytes in another directory.
    from albert_exp.pretraining_data import build_tasks, execute

    tasks, _, info = build_tasks(_cfg(data["tmp"] / "d", data["corpus"], Path(m["tokenizer_dir"]), *DYN))
    again = execute(tasks, "local", 1, None, info["lines"])
    assert all(e["skipped"] for e in again)
    fresh = json.loads(
        Path(make_dynamic(data["tmp"] / "d2", data["corpus"], Path(m["tokenizer_dir"]), DYN[1])["manifest"]).read_text()
    )
    assert [e["sha256"] for e in fresh["shards"]] == [e["sha256"] for e in m["shards"]]


def test_statistics_match_the_static_path(data):
    """EPOCHS epochs of dynamic instances against dupe_factor=EPOCHS static TFRecords of the same corpus.
    Tolerances: both are random samples of a few thousand instances from the same distribution."""
    from albert_exp.pretraining_data import summarize
    from albert_exp.pretraining_data.dynamic import DynamicSource
    from albert_exp.pretraining_data.instances import BlockStats, _build

    src = DynamicSource(data["dynamic"]["manifest"])
    total = BlockStats(ngram_hist=[0] * src.params.ngram)
    lengths = []
    for e in range(EPOCHS):
        for r in range(len(src.units)):
            arrays, plan, n = src.plan(e, r)
            cols = src.layout.columns(n)
            total.add(_build(arrays[0], plan, 0, n, src.vocab, src.params, src.layout, cols, None)[1])
            lengths.append(cols[1].sum(1))
    dyn = summarize([{"stats": asdict(total), "records": total.instances, "bytes": 0, "lines": 0}])
    st = data["static"]["totals"]
    assert abs(dyn["instances"] / st["instances"] - 1) < 0.03, (dyn["instances"], st["instances"])
    assert abs(dyn["masked_share"] - st["masked_share"]) < 0.003
    for k in ("mask_share", "keep_share", "random_share"):
        assert abs(dyn[k] - st[k]) < 0.015, k
    assert abs(dyn["mask_share"] - 0.8) < 0.02 and abs(dyn["keep_share"] - 0.1) < 0.02
    for a, b in zip(dyn["ngram_share"], st["ngram_share"], strict=True):
        assert abs(a - b) < 0.02
    assert abs(dyn["sop_swapped_share"] - 0.5) < 0.03 and abs(st["sop_swapped_share"] - 0.5) < 0.03
    assert abs(dyn["short_target_share"] - st["short_target_share"]) < 0.03
    tokens_dyn, tokens_st = np.concatenate(lengths).mean(), st["tokens"] / st["instances"]
    assert abs(tokens_dyn / tokens_st - 1) < 0.03, (tokens_dyn, tokens_st)


def _batches(manifest: str, *, workers: int, rank: int, world: int, start: int, n: int, micro: int = 8) -> list:
    from albert_exp.pretrain.data import DynamicDataset

    ds = DynamicDataset(manifest, micro=micro, start=start, rank=rank, world=world, max_seq_length=SEQ, hint=None)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    out = []
    for b in loader:
        b.pop("meta")
        out.append(b)
        if len(out) == n:
            break
    return out


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_batches_depend_only_on_the_index_not_on_workers_or_ranks(data):
    m = data["dynamic"]["manifest"]
    one = _batches(m, workers=0, rank=0, world=1, start=0, n=12)
    assert _same(one, _batches(m, workers=2, rank=0, world=1, start=0, n=12))
    # Two ranks: rank r's k-th micro-batch is global micro-batch 2k + r.
    r0 = _batches(m, workers=2, rank=0, world=2, start=0, n=6)
    r1 = _batches(m, workers=0, rank=1, world=2, start=0, n=6)
    assert _same(one[0::2], r0) and _same(one[1::2], r1)
    # Resume: starting at batch 5 gives batches 5.. of the uninterrupted sequence.
    assert _same(one[5:], _batches(m, workers=2, rank=0, world=1, start=5, n=7))
    # Across the epoch boundary: the sequence goes on, with other pairs and masks for the same documents.
    from albert_exp.pretraining_data.dynamic import DynamicSource

    src = DynamicSource(m)
    per_epoch = sum(src.plan(0, r)[2] for r in range(len(src.units)))
    f0, _, e0 = src.instances(0, 4)
    f1, _, e1 = src.instances(per_epoch, 4)
    assert (e0, e1) == (0, 1) and not np.array_equal(f0["input_ids"], f1["input_ids"])
    again, _, _ = DynamicSource(m).instances(per_epoch, 4)
    assert all(np.array_equal(f1[k], again[k]) for k in f1)


def test_pretrain_on_dynamic_data_and_resume(data, tmp_path, mlflow_store):
    """pretrain reads the dynamic manifest, and a run killed after its step-3 checkpoint and run again
    continues identically (loader workers: test_batches_depend_only_on_the_index_not_on_workers_or_ranks)."""
    from albert_exp.config import load_config
    from tests.conftest import stage_runner

    run = stage_runner("pretrain")
    from tests.test_pretrain import TINY_MODEL

    def cfg(name: str, **pretrain):
        return load_config(
            None,
            [
                f"workdir={tmp_path / 'w'}",
                f"pretrain.input=[{data['dynamic']['manifest']}]",
                f"pretrain.output_dir={tmp_path / name}",
                *[
                    f"model.{k}={v}"
                    for k, v in {**TINY_MODEL, "vocab_size": 400, "max_position_embeddings": SEQ}.items()
                ],
                *[
                    f"pretrain.{k}={v}"
                    for k, v in {
                        "max_seq_length": SEQ,
                        "max_predictions_per_seq": 10,
                        "batch_size": 8,
                        "num_train_steps": 6,
                        "num_warmup_steps": 1,
                        "learning_rate": 0.01,
                        "log_every_steps": 1,
                        "save_checkpoints_steps": 3,
                        "log_checkpoints": False,
                        "torch_threads": 1,
                        **pretrain,
                    }.items()
                ],
            ],
        )

    def losses(res) -> list[float]:
        rows = [json.loads(x) for x in (Path(res["output_dir"]) / "metrics.jsonl").read_text().splitlines()]
        return [r["train/loss"] for r in rows if "train/loss" in r]

    threads = torch.get_num_threads()
    try:
        a = run(cfg("a", num_workers=0))
        first = losses(a)
        # A run killed after its step-3 checkpoint: drop the later one, run the same command again.
        import shutil

        from albert_exp import checkpoint

        done = Path(a["output_dir"])  # back to the work directory a killed run leaves, before its last checkpoint
        work = done.with_name(done.name + ".partial")
        done.rename(work)
        (work / "results.json").unlink()
        for d in checkpoint.checkpoint_dirs(work):
            if int(d.name.split("-")[1]) > 3:
                shutil.rmtree(d)
        c = run(cfg("a", num_workers=0))
    finally:
        torch.set_num_threads(threads)
    assert len(first) == 6 and c["resumed_from"].endswith("step-00000003")
    np.testing.assert_allclose(losses(c), first, rtol=1e-6)


@pytest.mark.slow  # two CLI subprocesses (~25 s): the default run has the same stage in-process (fixture)
def test_cli_makes_dynamic_data_and_logs_what_it_stored(data, tok_dir, tmp_path, mlflow_store):  # noqa: F811
    """`albert-exp pretraining-data --mode dynamic` as a user runs it: Arrow shards, vocab.npz, a manifest
    that says dynamic, MLflow metrics of what was stored (no instance statistics: the loader draws them); a
    bad mode is a one-line user error (exit 2)."""
    import os
    import subprocess
    import sys

    import mlflow

    from tests.conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "albert_exp", "pretraining-data", "--workdir", str(tmp_path / "w")]
    cmd += ["--input", str(data["corpus"]), "--tokenizer-dir", str(tok_dir), "--workers", "1"]
    out = subprocess.run([*cmd, "--mode", "dynamic"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "w" / "pretraining_data" / "results.json").read_text())
    m = json.loads(Path(res["manifest"]).read_text())
    assert m["mode"] == "dynamic" and all(f.endswith(".arrow") for f in res["files"])
    assert (tmp_path / "w" / "pretraining_data" / "vocab.npz").is_file()
    assert m["totals"]["stored_tokens"] == data["dynamic"]["totals"]["stored_tokens"]  # same corpus, same tokens
    metrics = mlflow.MlflowClient().get_run(res["run_id"]).data.metrics
    assert metrics["pretraining_data/stored_tokens"] == m["totals"]["stored_tokens"]
    assert "pretraining_data/masked_share" not in metrics
    bad = subprocess.run([*cmd, "--mode", "dynamc"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "dynamc" in bad.stderr and "Traceback" not in bad.stderr


def test_dynamic_held_out_data_gives_fixed_eval_batches(data):
    from albert_exp.pretrain.data import eval_batches, resolve_eval_inputs

    files = resolve_eval_inputs([str(Path(data["dynamic"]["manifest"]).parent)])  # the directory will do
    a = eval_batches(files, n=3, batch_size=8, max_seq_length=SEQ)
    b = eval_batches(files, n=3, batch_size=8, max_seq_length=SEQ)
    assert len(a) == 3 and _same(a, b) and a[0]["input_ids"].shape == (8, SEQ)
