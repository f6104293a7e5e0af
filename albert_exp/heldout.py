"""Held-out pretraining data for the toy experiment: the pretrain run's `eval/*` curve needs data it never saw.

`main` on the toy corpus (when `pretrain.eval_input` is empty) generates further toy documents with another seed,
makes them into TFRecords exactly as the training shards (same tokenizer, sequence length, masking; one pass),
under `<workdir>/heldout/`, and hands them to `pretrain` as `eval_input`. Both steps run without MLflow runs of
their own (albert_exp.tracking.offline): they are part of the pretrain stage's input, not stages to compare.
A real corpus holds out data by naming its own files in `pretrain.eval_input`.
"""

from __future__ import annotations

import dataclasses

from albert_exp.config import ExperimentConfig

SEED_OFFSET = 7919  # another seed: documents the training corpus does not contain
DOCUMENTS = 300  # ~500 instances at one pass: pretrain.eval_batches x batch_size of the toy


def applies(cfg: ExperimentConfig) -> bool:
    return cfg.corpus.toy and "pretrain" in cfg.stages and not cfg.pretrain.eval_input


def make(cfg: ExperimentConfig, tokenizer_dir: str) -> list[str]:
    """The held-out TFRecord files (made once per work directory and identity)."""
    from albert_exp import corpus, pretraining_data
    from albert_exp.identity import output_of
    from albert_exp.tracking import offline

    c, p = cfg.corpus, cfg.pretraining_data
    held = dataclasses.replace(
        cfg,
        seed=cfg.seed + SEED_OFFSET,
        workdir=str((cfg.root / "heldout").resolve()),
        corpus=dataclasses.replace(c, toy_documents=DOCUMENTS, toy_train_rows=1, toy_val_rows=1, toy_test_rows=1),
        pretraining_data=dataclasses.replace(
            p, input=None, output_dir=None, tokenizer_dir=str(tokenizer_dir), dupe_factor=1, workers=1
        ),
    )
    with offline():  # made once: a complete output of the same identity is used as it is
        if output_of(held, "corpus").complete() is None:
            corpus.run(held)
        res = output_of(held, "pretraining-data", pretraining_data.output_link(held)).complete()
        res = res or pretraining_data.run(held)
    return [str(f) for f in res["files"]]
