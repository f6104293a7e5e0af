"""Stage identity: the one rule for what a stage's output depends on, for every declared stage alike.

A stage's key is the sha256 of
  - the settings of its own config section that decide what its output holds (config fields not marked
    `in_key=False`: albert_exp/config.py `identity_settings`), the seed, and what its declaration adds
    (`Stage.key_extra`: e.g. the `model:` section of a model built from scratch),
  - the content digests of its inputs (`Stage.inputs`: upstream manifests, model and tokenizer files; never
    their paths, so two workdirs holding the same bytes give the same key),
  - the code version (albert_exp/digest.py `code_version`).
The executor (albert_exp/executor.py) resumes only a work directory with the same key, reuses a complete
output with the same key, and computes any other key into its own directory (albert_exp/outputs.py). Nothing
here knows a stage by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from albert_exp.config import ExperimentConfig, identity_settings
from albert_exp.digest import files_digest, stage_key, tree_digest
from albert_exp.outputs import StageOutput
from albert_exp.stage import Paths, Stage


def settings(cfg: ExperimentConfig, section: str) -> dict[str, Any]:
    """The settings of `section` that are part of an identity."""
    return identity_settings(getattr(cfg, section))


def input_digests(paths: Paths) -> dict[str, str]:
    """Content digests of what a stage reads (a missing input digests as missing: the stage itself says so)."""
    out = {}
    for name, p in paths.items():
        if isinstance(p, list):
            out[name] = files_digest(p)
        else:
            out[name] = tree_digest(p) if Path(p).exists() else f"missing:{Path(p).name}"
    return out


def key_of(stage: Stage, cfg: ExperimentConfig) -> str:
    """The key of `stage` under `cfg` (the config it runs under: Stage.configure applied)."""
    sections = {stage.section: settings(cfg, stage.section), "seed": cfg.seed, **stage.key_extra(cfg)}
    return stage_key(stage.name, sections, input_digests(stage.inputs(cfg)))


def output_of(stage: Stage, cfg: ExperimentConfig) -> StageOutput:
    """Where `stage` writes under `cfg` (its key computed now)."""
    return StageOutput(stage.output_link(cfg), key_of(stage, cfg))
