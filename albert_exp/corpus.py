"""Corpus stage: document-aligned text shards with a manifest, or the synthetic toy corpus.

    albert-exp corpus --config experiments/toy.yaml --toy

The stage is declared at the end (`STAGE`); albert_exp/executor.py runs it (identity, reuse, the run).

Writes into <workdir>/corpus/: `shards/shard-NNNNN.txt` (ALBERT's input format: one sentence per line, a blank
line between documents), `manifest.json` (per shard: path, lines, documents, bytes, sha256), and for the toy
corpus the labelled `train.csv`, `val.csv`, `test.csv` (columns `text,phrase`; phrases separated by `|`,
empty for a negative review).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from albert_exp import toy, toy_real
from albert_exp.config import ExperimentConfig
from albert_exp.corpus_files import ShardWriter, write_labelled_csv  # noqa: F401  (the corpus formats)
from albert_exp.digest import file_digest
from albert_exp.errors import UserError
from albert_exp.stage import Context, Stage


def write_toy(cfg: Any, out: Path) -> dict[str, Any]:
    """The toy corpus of `cfg.corpus` into `out`: labelled train/val/test CSVs and the pretraining shards.

    `toy_mode: parts` is the original generator above; `realistic` is albert_exp/toy_real.py (chat-style
    reviews, test dishes with unseen words, an unlabelled corpus that never copies a labelled test review)."""
    c = cfg.corpus
    gen = toy_real if c.toy_mode == "realistic" else None
    sizes = {"train": c.toy_train_rows, "val": c.toy_val_rows, "test": c.toy_test_rows}
    test_texts: set[str] = set()
    for split, n in sizes.items():
        make_rows = gen.labelled_rows if gen else toy.labelled_rows
        rows = list(make_rows(cfg.seed, split, n, c.negative_share, c.max_dishes_per_review))
        write_labelled_csv(out / f"{split}.csv", ((r.text, r.phrases) for r in rows))
        if split == "test":
            test_texts = {r.text for r in rows}
    writer = ShardWriter(out, c.lines_per_shard)
    docs = gen.unlabelled_documents(cfg.seed, c.toy_documents, test_texts) if gen else None
    for doc in docs or toy.pretraining_documents(cfg.seed, c.toy_documents):
        writer.add(doc)
    return writer.finish({"source": "toy", "toy_mode": c.toy_mode, "seed": cfg.seed})


def inputs(cfg: ExperimentConfig) -> dict[str, Path | list[Path]]:
    """The text files (their contents count, not their names); the toy corpus reads nothing."""
    if cfg.corpus.toy:
        return {}
    from albert_exp.corpus_text import expand_inputs

    return {"inputs": expand_inputs(cfg.corpus.inputs)}


def check(ctx: Context) -> None:
    if not ctx.cfg.corpus.toy and not ctx.cfg.corpus.inputs:
        raise UserError(
            "no corpus given",
            where=ctx.cfg.source,
            fix="set corpus.inputs to your text files, or corpus.toy: true for the synthetic corpus",
        )


def compute(ctx: Context) -> dict[str, Any]:
    """Shards (or the toy corpus) into the work directory; not resumable: a killed run starts over."""
    cfg, out, tracker = ctx.cfg, ctx.work, ctx.tracker
    if cfg.corpus.toy:
        manifest = write_toy(cfg, out)
    else:
        from albert_exp.corpus_text import make_corpus

        manifest = make_corpus(cfg, out)
        tracker.log_metrics(
            {"corpus/lines_read": manifest["lines_read"], "corpus/bad_lines": manifest["bad_lines"]}, step=0
        )
    tracker.set_tags({"corpus_sha256": manifest["sha256"], "manifest_sha256": file_digest(out / "manifest.json")})
    tracker.log_metrics(
        {
            "corpus/lines": manifest["lines"],
            "corpus/documents": manifest["documents"],
            "corpus/shards": len(manifest["shards"]),
        },
        step=0,
    )
    tracker.log_artifact(out / "manifest.json")
    for split in ("train", "val", "test"):
        if (out / f"{split}.csv").exists():
            tracker.log_artifact(out / f"{split}.csv", "labelled")
    return {
        "manifest": str(ctx.done / "manifest.json"),
        "lines": manifest["lines"],
        "documents": manifest["documents"],
        "corpus_sha256": manifest["sha256"],
    }


STAGE = Stage(
    name="corpus",
    section="corpus",
    compute=compute,
    inputs=inputs,
    prepare=check,
    describe=lambda cfg: "toy" if cfg.corpus.toy else "shards",
)
