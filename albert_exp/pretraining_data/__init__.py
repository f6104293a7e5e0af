"""Pretraining-data stage: corpus shards -> TFRecord shards with google-research/albert's features.

    albert-exp pretraining-data --config experiments/toy.yaml
    albert-exp pretraining-data --workers 8 --dupe-factor 40 --max-seq-length 64
    albert-exp pretraining-data --executor ray --address <head>:6379    # shards on a Ray cluster
    albert-exp pretraining-data --mode dynamic     # tokenised documents once; pretrain masks on the fly

Reads <workdir>/corpus/manifest.json and the tokenizer of <workdir>/vocab/tokenizer; writes
<workdir>/pretraining_data/shard-NNNNN.tfrecord (one per corpus shard) that google's `run_pretraining.py` reads
unchanged (`.tfrecord.gz` with --compress: GZIP, which it does not read unchanged; gunzip first), plus
`manifest.json` (per shard: records, sha256, bytes and statistics; totals; the feature spec). Shards run in
parallel (local processes, or Ray tasks, which need the output directory on storage every node sees); the
bytes do not depend on the executor or the worker count.
A rerun skips complete shards (see shards.py), so a killed job resumes where it stopped. In dynamic mode
each shard is `shard-NNNNN.arrow` (dynamic.py) and the manifest says `"mode": "dynamic"`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from albert_exp.config import ExperimentConfig
from albert_exp.digest import file_digest
from albert_exp.errors import UserError
from albert_exp.stage import Context, Stage

__all__ = ["STAGE", "build_tasks", "execute", "summarize", "write_manifest"]


def _tokenizer_settings(tokenizer_dir: Path) -> tuple[bool, bool]:
    cfg_file = tokenizer_dir / "tokenizer_config.json"
    if not cfg_file.is_file():
        raise UserError(
            "tokenizer directory not found (no tokenizer_config.json)",
            where=str(tokenizer_dir),
            fix="run `albert-exp vocab` first, or set pretraining_data.tokenizer_dir",
        )
    tc = json.loads(cfg_file.read_text())
    return bool(tc.get("do_lower_case", True)), bool(tc.get("keep_accents", False))


def output_link(cfg: ExperimentConfig) -> Path:
    c = cfg.pretraining_data
    return Path(c.output_dir) if c.output_dir else cfg.stage_dir("pretraining-data")


def build_tasks(cfg: ExperimentConfig, out: Path | None = None, check_only: bool = False) -> tuple[list, Path, dict]:
    """One task per corpus shard, writing into `out` (default: the configured output directory). `check_only`:
    read and check the inputs (corpus manifest, tokenizer, lengths), make nothing."""
    from albert_exp.pretraining_data.shards import ShardTask

    c = cfg.pretraining_data
    from albert_exp.corpus_text import read_manifest

    manifest_path = Path(c.input) if c.input else cfg.stage_dir("corpus") / "manifest.json"
    corpus = read_manifest(manifest_path, flag="--input")
    tok_dir = Path(c.tokenizer_dir) if c.tokenizer_dir else cfg.stage_dir("vocab") / "tokenizer"
    lowercase, keep_accents = _tokenizer_settings(tok_dir)
    params = c.resolved(cfg.pretrain)
    if params.max_seq_length < 5:
        raise UserError(
            f"max_seq_length {params.max_seq_length} leaves no room for two segments",
            where=cfg.source,
            fix="use max_seq_length >= 5",
        )
    if check_only:
        return [], Path(), {}
    out = out or output_link(cfg)
    out.mkdir(parents=True, exist_ok=True)
    suffix = ".arrow" if c.mode == "dynamic" else ".tfrecord.gz" if c.compress else ".tfrecord"
    tasks = []
    for i, shard in enumerate(corpus["shards"]):
        src = manifest_path.parent / shard["path"]
        tasks.append(
            ShardTask(
                index=i,
                input_path=str(src.resolve()),
                input_sha256=shard.get("sha256", ""),
                output_path=str((out / f"shard-{i:05d}{suffix}").resolve()),
                tokenizer_dir=str(tok_dir.resolve()),
                lowercase=lowercase,
                keep_accents=keep_accents,
                params=params,
                seed=cfg.seed,
            )
        )
    lines = {i: s.get("lines", 0) for i, s in enumerate(corpus["shards"])}
    return (
        tasks,
        out,
        {
            "corpus_manifest": str(manifest_path),
            "corpus_sha256": corpus.get("sha256", ""),
            "tokenizer_dir": str(tok_dir),
            "lines": lines,
        },
    )


def execute(
    tasks: list,
    executor: str = "local",
    workers: int = 0,
    address: str | None = None,
    lines: dict[int, int] | None = None,
) -> list[dict]:
    """Run every shard task; results in shard order whatever the completion order."""
    from tqdm import tqdm

    from albert_exp.pretraining_data.shards import process_shard

    total = sum((lines or {}).values()) or None
    bar = tqdm(total=total, unit="line", unit_scale=True, desc="pretraining-data", smoothing=0.1)
    results: dict[int, dict] = {}

    def done(entry: dict, counted: bool = False) -> None:
        results[entry["index"]] = entry
        if not counted:
            bar.update(entry.get("lines", 0))
        bar.set_postfix(shards=f"{len(results)}/{len(tasks)}")

    try:
        if executor == "ray":
            _execute_ray(tasks, address, done)
        elif workers == 1 or len(tasks) == 1:
            for t in tasks:  # in-process: the bar moves per block
                entry = process_shard(t, progress=bar.update)
                done(entry, counted=not entry["skipped"])
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            n = min(workers or os.cpu_count() or 1, len(tasks))
            from albert_exp.pretraining_data.shards import die_with_parent

            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(n, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
                futures = [pool.submit(process_shard, t) for t in tasks]
                for f in as_completed(futures):
                    done(f.result())
    finally:
        bar.close()
    return [results[t.index] for t in tasks]


def _execute_ray(tasks: list, address: str | None, done) -> None:
    from albert_exp.pretraining_data.shards import process_shard

    with ray_session(address) as ray:
        remote = ray.remote(num_cpus=1, max_retries=2)(process_shard)
        pending = [remote.remote(t) for t in tasks]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done(ray.get(ready[0]))


# Ray reads this when it is imported: off, a local Ray instance takes 127.0.0.1 as its node address instead of
# the machine's address, and its GCS, raylet and workers listen on loopback only (Ray 2.60; checked by
# tests/test_hardening.py). Ray's GCS accepts anyone who can reach it, so a head started here must not be
# reachable from the network; a cluster is joined with --address and secured by whoever runs it.
_RAY_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Connect to the Ray cluster at `address`, or start a local Ray instance bound to 127.0.0.1 only."""
    local = not address
    if local:
        os.environ[_RAY_LOOPBACK_ENV] = "0"
    from albert_exp.extras import require

    ray = require("ray", "pretraining_data.executor: ray")
    consts = getattr(getattr(ray, "_private", None), "ray_constants", None)
    if local and consts is not None:
        consts.ENABLE_RAY_CLUSTER = False  # in case Ray was imported before the variable was set
    token_env = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    if local and os.environ.get("RAY_AUTH_MODE", "token").lower() == "token" and not any(map(os.getenv, token_env)):
        # A new local instance makes Ray write ~/.ray/auth_token readable by everyone (0644). Written here first,
        # private (0600, a new ~/.ray 0700), Ray finds it and keeps it; an existing token is the user's own.
        import secrets

        token = Path.home() / ".ray" / "auth_token"
        try:
            token.parent.mkdir(mode=0o700, exist_ok=True)
            with os.fdopen(os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
                fh.write(secrets.token_hex(32))  # what Ray's generate_new_authentication_token() writes
        except OSError:  # there already, or a home nobody can write to (where Ray cannot write it either)
            pass
    root = str(Path(__file__).resolve().parents[2])
    ctx = ray.init(
        address=address or None,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": root}},  # nodes without the package installed
        **({"_node_ip_address": "127.0.0.1", "include_dashboard": False} if local else {}),
    )
    try:
        node_ip = ctx.address_info.get("node_ip_address")
        if local and node_ip != "127.0.0.1":  # never keep a head running that the network can reach
            raise RuntimeError(f"the local Ray instance took node address {node_ip}, not 127.0.0.1")
        yield ray
    finally:
        ray.shutdown()


def summarize(entries: list[dict]) -> dict[str, Any]:
    """Totals and shares over all shards (the numbers the statistical tests check)."""
    from albert_exp.pretraining_data.instances import BlockStats

    total = BlockStats()
    for e in entries:
        total.add(BlockStats(**e["stats"]))
    n, masked = max(total.instances, 1), max(total.masked, 1)
    hist = total.ngram_hist
    return {
        **{k: v for k, v in asdict(total).items() if k != "ngram_hist"},
        "ngram_hist": hist,
        "masked_share": total.masked / max(total.tokens, 1),
        "target_masked_share": total.target_masked / max(total.tokens, 1),
        "sop_swapped_share": total.sop_swapped / n,
        "short_target_share": total.short_target / n,
        "mask_share": total.replaced_mask / masked,
        "keep_share": total.replaced_keep / masked,
        "random_share": total.replaced_random / masked,
        "ngram_share": [h / max(sum(hist), 1) for h in hist],
        "records": sum(e["records"] for e in entries),
        "stored_documents": sum(e.get("documents", 0) for e in entries),  # dynamic mode
        "stored_tokens": sum(e.get("tokens", 0) for e in entries),
        "bytes": sum(e["bytes"] for e in entries),
        "lines": sum(e["lines"] for e in entries),
    }


def write_manifest(cfg: ExperimentConfig, out: Path, info: dict, entries: list[dict], p) -> dict[str, Any]:
    """manifest.json (and, in dynamic mode, the loader's view of the vocabulary: vocab.npz); returns the
    totals."""
    from albert_exp.pretraining_data.shards import instance_settings
    from albert_exp.tfrecord import FEATURES

    c = cfg.pretraining_data
    totals = summarize(entries)
    lengths = {"seq": p.max_seq_length, "pred": p.max_predictions_per_seq, 1: 1}
    if c.mode == "dynamic":
        from albert_exp.pretraining_data.dynamic import save_vocab
        from albert_exp.pretraining_data.shards import Tokenizer

        tok_dir = info["tokenizer_dir"]
        save_vocab(out / "vocab.npz", Tokenizer(tok_dir, *_tokenizer_settings(Path(tok_dir))).vocab)
    manifest = {
        "mode": c.mode,
        "vocab": "vocab.npz" if c.mode == "dynamic" else None,
        "shards": [{k: v for k, v in e.items() if k != "skipped"} for e in entries],
        "totals": totals,
        "params": instance_settings(p),
        "seed": cfg.seed,
        "compress": c.compress,
        "features": {k: [kind, lengths[n]] for k, (kind, n) in FEATURES.items()},
        **info,
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / "manifest.json")
    return totals


def inputs(cfg: ExperimentConfig) -> dict[str, Path | list[Path]]:
    c = cfg.pretraining_data
    return {
        "corpus_manifest": Path(c.input) if c.input else cfg.stage_dir("corpus") / "manifest.json",
        "tokenizer": Path(c.tokenizer_dir) if c.tokenizer_dir else cfg.stage_dir("vocab") / "tokenizer",
    }


def _describe(cfg: ExperimentConfig) -> str:
    p = cfg.pretraining_data.resolved(cfg.pretrain)
    return f"seq {p.max_seq_length} " + ("dynamic" if p.mode == "dynamic" else f"dupe {p.dupe_factor}")


def compute(ctx: Context) -> dict[str, Any]:
    """Every shard into the work directory of its identity (a rerun with the same identity skips the complete
    shards and logs into the same run)."""
    cfg, tracker = ctx.cfg, ctx.tracker
    c = cfg.pretraining_data
    tasks, out, info = build_tasks(cfg, ctx.work)
    p = tasks[0].params
    tracker.set_tags({"corpus_sha256": info["corpus_sha256"]})
    entries = execute(tasks, c.executor, c.workers, c.address, info["lines"])
    if c.mode != "dynamic" and not sum(e.get("records", 0) for e in entries):
        raise UserError(
            f"no pretraining instances from {sum(e['lines'] for e in entries)} lines: every document was too "
            "short (a single token)",
            where=info["corpus_manifest"],
            fix="give a corpus with sentences of several words",
        )
    totals = write_manifest(cfg, out, info, entries, p)
    for e in entries:  # per shard, step = shard index
        s = e["stats"]
        per_shard = (
            {"pretraining_data/shard_tokens": e["tokens"], "pretraining_data/shard_documents": e["documents"]}
            if c.mode == "dynamic"  # no instances yet: the loader draws them
            else {
                "pretraining_data/shard_instances": s["instances"],
                "pretraining_data/shard_masked_share": s["masked"] / max(s["tokens"], 1),
                "pretraining_data/shard_sop_swapped_share": s["sop_swapped"] / max(s["instances"], 1),
            }
        )
        tracker.log_metrics({**per_shard, "pretraining_data/shard_seconds": e["seconds"]}, step=e["index"])
    scalars = {f"pretraining_data/{k}": v for k, v in totals.items() if isinstance(v, (int, float))}
    if c.mode == "dynamic":
        keep = ("stored_documents", "stored_tokens", "bytes", "lines")
        scalars = {k: v for k, v in scalars.items() if k.split("/")[1] in keep}
    else:
        scalars.update({f"pretraining_data/ngram_{i + 1}_share": v for i, v in enumerate(totals["ngram_share"])})
    tracker.log_metrics(scalars, step=0)
    tracker.log_artifact(out / "manifest.json")
    tracker.set_tags({"manifest_sha256": file_digest(out / "manifest.json")})
    skipped = sum(1 for e in entries if e.get("skipped"))
    return {
        "manifest": str(ctx.done / "manifest.json"),
        "files": [str(ctx.done / e["path"]) for e in entries],
        "records": totals["records"],
        "bytes": totals["bytes"],
        "shards": len(entries),
        "shards_skipped": skipped,
        "masked_share": totals["masked_share"],
        "sop_swapped_share": totals["sop_swapped_share"],
        "max_seq_length": p.max_seq_length,
        "max_predictions_per_seq": p.max_predictions_per_seq,
    }


STAGE = Stage(
    name="pretraining-data",
    section="pretraining_data",
    compute=compute,
    inputs=inputs,
    needs=lambda cfg: (
        ("corpus",) * (not cfg.pretraining_data.input) + ("vocab",) * (not cfg.pretraining_data.tokenizer_dir)
    ),
    # the two lengths default to pretraining's
    key_extra=lambda cfg: {"lengths": _lengths(cfg)},
    prepare=lambda ctx: build_tasks(ctx.cfg, check_only=True),
    link=output_link,
    describe=_describe,
    resumable=True,
)


def _lengths(cfg: ExperimentConfig) -> list[int]:
    p = cfg.pretraining_data.resolved(cfg.pretrain)
    return [p.max_seq_length, p.max_predictions_per_seq]
