"""`scratch` stage of `main`: the same fine-tuning from random weights, the control for "what did pretraining buy".

    albert-exp main --config experiments/toy.yaml        # on by default; leave `scratch` out of `stages:` to skip

Same data, tokenizer, model size, seed and fine-tuning settings as the `finetune` stage; only the starting
weights differ (a fresh `model:`-sized ALBERT). Its own output (under the link `<workdir>/scratch/finetune`),
its own child run (`scratch lr=...`, tag `stage=scratch`): fine-tuning's declaration with another config. Its
identity is fine-tuning's under that config (albert_exp/identity.py): `main` reuses it while fine-tuning's
settings, the labelled split, the tokenizer, `model:` and the code are unchanged (a new pretraining does not
change it). The parent run then carries `gain/test/<metric>` =
pretrained minus scratch (albert_exp/summary.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from albert_exp import finetune
from albert_exp.config import ExperimentConfig, with_overrides


def applies(cfg: ExperimentConfig) -> bool:
    """Only when the `finetune` stage starts from pretrained weights: otherwise it *is* the from-scratch run."""
    return "pretrain" in cfg.stages or bool(cfg.finetune.model_dir)


def scratch_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """`cfg` with random initial weights, reading the tokenizer fine-tuning reads (the pretrained model's own,
    where finetune.model_dir names one)."""
    tokenizer = str(finetune.data_paths(cfg)["tokenizer"])
    # freeze_embeddings keeps what pretraining learned; random embeddings hold nothing worth keeping (frozen, the
    # realistic toy's scratch tagger reaches val phrase F1 0.15 instead of 0.76), so the control trains them
    changes = {"model_dir": None, "tokenizer_dir": tokenizer, "freeze_embeddings": False}
    return with_overrides(cfg, {f"finetune.{k}": v for k, v in changes.items()})


def output_link(cfg: ExperimentConfig) -> Path:
    """The link that names the current from-scratch output (`<workdir>/scratch/finetune`)."""
    return cfg.root / "scratch" / "finetune"


def describe(cfg: ExperimentConfig) -> str:
    return f"lr={cfg.finetune.learning_rate:g}"


# fine-tuning's declaration under scratch_config: the same work, inputs and identity rule, its own output and run
STAGE = dataclasses.replace(
    finetune.STAGE,
    name="scratch",
    needs=lambda cfg: tuple(n for n in finetune.needs(cfg) if n != "pretrain"),
    configure=lambda cfg, upstream: scratch_config(cfg),
    link=output_link,
    describe=describe,
    applies=applies,
)
