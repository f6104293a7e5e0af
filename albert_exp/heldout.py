"""Held-out pretraining data for the toy experiment: the pretrain run's `eval/*` curve needs data it never saw.

On the toy corpus (when `pretrain.eval_input` is empty) pretraining needs this stage, which the executor makes
on demand (`auto`: it is in no `stages:` list): further toy documents with another seed, made into TFRecords
exactly as the training shards (same tokenizer, sequence length, masking; one pass), under
`<workdir>/eval_data@<identity>/`, static TFRecords also when the training data is dynamic (an evaluation
with fixed masks). It has no MLflow run of its own: it is part of pretraining's input, not a stage
to compare. Under `torchrun` rank 0 alone makes it. A real corpus holds out data by naming its own files in
`pretrain.eval_input`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from albert_exp.config import ExperimentConfig, identity_settings, with_overrides
from albert_exp.stage import Context, Stage

SEED_OFFSET = 7919  # another seed: documents the training corpus does not contain
DOCUMENTS = 300  # ~500 instances at one pass: pretrain.eval_batches x batch_size of the toy


def applies(cfg: ExperimentConfig) -> bool:
    return cfg.corpus.toy and "pretrain" in cfg.stages and not cfg.pretrain.eval_input


def held_config(cfg: ExperimentConfig, out: Path) -> ExperimentConfig:
    """The toy corpus and pretraining data settings of the held-out documents, written under `out`."""
    sizes = {"toy_documents": DOCUMENTS, "toy_train_rows": 1, "toy_val_rows": 1, "toy_test_rows": 1}
    data = {
        "input": str(out / "corpus" / "manifest.json"),
        "output_dir": None,
        "tokenizer_dir": str(cfg.stage_dir("vocab") / "tokenizer"),
        "dupe_factor": 1,
        "workers": 1,
        "mode": "static",  # fixed masks, the same evaluation at every step, whichever mode the training data has
    }
    return with_overrides(
        cfg,
        {
            "seed": cfg.seed + SEED_OFFSET,
            "workdir": str(out),
            **{f"corpus.{k}": v for k, v in sizes.items()},
            **{f"pretraining_data.{k}": v for k, v in data.items()},
        },
    )


def compute(ctx: Context) -> dict[str, Any]:
    from albert_exp import corpus, pretraining_data

    held = held_config(ctx.cfg, ctx.work)
    (ctx.work / "corpus").mkdir(parents=True, exist_ok=True)
    corpus.write_toy(held, ctx.work / "corpus")
    tasks, out, info = pretraining_data.build_tasks(held, ctx.work / "records")
    entries = pretraining_data.execute(tasks, "local", 1, None, info["lines"])
    pretraining_data.write_manifest(held, out, info, entries, tasks[0].params)
    return {"files": [str(ctx.done / "records" / e["path"]) for e in entries]}


def _settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """What the held-out records depend on besides the corpus settings: their masking settings and lengths."""
    held = held_config(cfg, Path("."))
    p = held.pretraining_data.resolved(held.pretrain)
    return {
        "pretraining_data": identity_settings(held.pretraining_data),
        "lengths": [p.max_seq_length, p.max_predictions_per_seq],
    }


STAGE = Stage(
    name="heldout",
    section="corpus",
    compute=compute,
    inputs=lambda cfg: {"tokenizer": cfg.stage_dir("vocab") / "tokenizer"},
    link=lambda cfg: cfg.root / "eval_data",
    needs=lambda cfg: ("vocab",),
    key_extra=_settings,
    tracked=False,
    auto=True,
)
