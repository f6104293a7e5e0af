"""`scratch` stage of `main`: the same fine-tuning from random weights, the control for "what did pretraining buy".

    albert-exp main --config experiments/toy.yaml        # on by default; leave `scratch` out of `stages:` to skip

Same data, tokenizer, model size, seed and fine-tuning settings as the `finetune` stage; only the starting
weights differ (a fresh `model:`-sized ALBERT). Its own work directory (`<workdir>/scratch/`, the output under
the link `<workdir>/scratch/finetune`), its own child run (`finetune from scratch ...`, tag `stage=scratch`). Its
identity is fine-tuning's under that config (albert_exp/identity.py): `main` reuses it while fine-tuning's
settings, the labelled split, the tokenizer, `model:` and the code are unchanged (a new pretraining does not
change it). The parent run then carries `gain/test/<metric>` =
pretrained minus scratch (albert_exp/summary.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from albert_exp.config import ExperimentConfig


def applies(cfg: ExperimentConfig) -> bool:
    """Only when the `finetune` stage starts from pretrained weights: otherwise it *is* the from-scratch run."""
    return "scratch" in cfg.stages and ("pretrain" in cfg.stages or bool(cfg.finetune.model_dir))


def scratch_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """`cfg` (as the finetune stage got it) with random initial weights and its own work directory."""
    from albert_exp.tune import trial_config

    f = cfg.finetune
    # trial_config pins the data and tokenizer paths (absolute) so that the new workdir does not move them
    t = trial_config(cfg, cfg.root / "scratch", f.learning_rate, f.epochs)
    # freeze_embeddings keeps what pretraining learned; random embeddings hold nothing worth keeping (frozen, the
    # realistic toy's scratch tagger reaches val phrase F1 0.15 instead of 0.76), so the control trains them
    return dataclasses.replace(
        t,
        finetune=dataclasses.replace(
            t.finetune, model_dir=None, select_metric=f.select_metric, freeze_embeddings=False
        ),
    )


def output_link(cfg: ExperimentConfig) -> Path:
    """The link that names the current from-scratch output (`<workdir>/scratch/finetune`)."""
    return scratch_config(cfg).stage_dir("finetune")


def run(cfg: ExperimentConfig) -> dict[str, Any]:
    from albert_exp import finetune
    from albert_exp.tracking import run_tags

    with run_tags({"stage": "scratch"}):  # overrides the `finetune` stage tag: the UI tells the two apart
        return finetune.run(scratch_config(cfg))
