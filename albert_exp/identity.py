"""Stage identity: the one rule for what a stage's output depends on.

A stage's key is the sha256 of
  - its own config section(s) (`finetune:` for fine-tuning, not the whole experiment),
  - the content digests of its inputs (upstream manifests, model and tokenizer files: never their paths),
  - the code version (`code_version()`: the commit plus a hash of uncommitted changes to the package; the
    package version outside git).
A stage resumes only an output with the same key, `main` reuses a complete output with the same key, and an
output with another key is computed elsewhere and renamed into place when complete (albert_exp/outputs.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from albert_exp.digest import file_digest, stage_key, tree_digest
from albert_exp.outputs import StageOutput

# ----------------------------------------------------------------------------------------------------------
# What each stage's key covers. Settings that only change where or how fast a stage runs (paths, worker counts,
# threads, store URLs) are left out; paths to inputs are replaced by the digests of what they hold.

NOT_IN_KEY: dict[str, set[str]] = {
    "corpus": {"inputs"},
    "vocab": set(),
    "pretraining_data": {"input", "tokenizer_dir", "output_dir", "workers", "executor", "address"},
    "pretrain": {
        "input",
        "eval_input",
        "init_from",
        "albert_config",
        "output_dir",
        "resume",
        "max_steps",  # a stop point of the same schedule: a later stop continues the same output (pretrain.last_step)
        "log_checkpoints",
        "keep_checkpoints",
        "torch_threads",
        "tpu_name",
        "tpu_zone",
        "gcp_project",
        "num_tpu_cores",
        "iterations_per_loop",
    },
    "finetune": {"model_dir", "tokenizer_dir", "train_csv", "val_csv", "test_csv", "torch_threads", "eval_batch_size"},
    "baseline": set(),
}
# The `finetune:` settings that decide which spans the labelled split holds: the CRF baseline reads the same
# split through them, and nothing else of fine-tuning (its epochs or learning rate do not change the baseline).
LABELLING = (
    "text_column",
    "phrase_column",
    "phrase_separator",
    "case_insensitive",
    "on_missing_phrase",
    "max_train_rows",
)


def _section(cfg: Any, name: str) -> dict[str, Any]:
    from albert_exp.config import to_dict

    return {k: v for k, v in to_dict(getattr(cfg, name)).items() if k not in NOT_IN_KEY.get(name, set())}


def pretraining_files(cfg: Any) -> list[str]:
    """The TFRecords pretraining reads (or the manifest of dynamic data): `pretrain.input` if given, else exactly
    the files the pretraining-data manifest lists (never a glob over the directory, which would pick up files of
    other runs)."""
    from albert_exp.errors import UserError

    if cfg.pretrain.input:
        from albert_exp.pretrain.data import resolve_inputs

        return resolve_inputs(cfg.pretrain.input, cfg.stage_dir("pretraining-data"))
    out = (
        Path(cfg.pretraining_data.output_dir) if cfg.pretraining_data.output_dir else cfg.stage_dir("pretraining-data")
    )
    manifest = out / "manifest.json"
    if not manifest.is_file():
        raise UserError(
            "pretraining-data manifest not found",
            where=str(manifest),
            fix="run `albert-exp pretraining-data` first, or set pretrain.input to TFRecord files or globs",
        )
    listed = json.loads(manifest.read_text())
    if listed.get("mode") == "dynamic":  # documents masked on the fly: the loader reads the manifest
        return [str(manifest.resolve())]
    return [str(manifest.resolve().parent / s["path"]) for s in listed["shards"]]


def _digest_or_missing(path: Path) -> str:
    return tree_digest(path) if path.exists() else f"missing:{path.name}"


def _pretrain_inputs(cfg: Any, tokenizer: Path) -> dict[str, Path | list[Path]]:
    """Pretraining reads the TFRecords (exactly those pretrain.input or the pretraining-data manifest names),
    the weights it starts from, the held-out records, and the tokenizer when the vocabulary size comes from it."""
    pc = cfg.pretrain
    paths: dict[str, Path | list[Path]] = {}
    if pc.input:
        paths["tfrecords"] = [Path(f) for f in pretraining_files(cfg)]
    else:
        out = Path(cfg.pretraining_data.output_dir or cfg.stage_dir("pretraining-data"))
        paths["pretraining_data_manifest"] = out / "manifest.json"
    if pc.init_from:
        paths["init_from"] = Path(pc.init_from)
    if pc.eval_input:
        from albert_exp.pretrain.data import resolve_eval_inputs

        paths["eval"] = [Path(f) for f in resolve_eval_inputs(pc.eval_input)]
    if not pc.init_from and not cfg.model.vocab_size:
        paths["tokenizer"] = tokenizer  # the vocabulary size comes from it
    return paths


def input_paths(cfg: Any, stage: str) -> dict[str, Path | list[Path]]:
    """What `stage` reads, by name: files or directories (their contents are what counts, not the paths)."""
    corpus_manifest = cfg.stage_dir("corpus") / "manifest.json"
    tokenizer = cfg.stage_dir("vocab") / "tokenizer"
    if stage == "corpus":
        if cfg.corpus.toy:
            return {}
        from albert_exp.corpus_text import expand_inputs

        return {"inputs": expand_inputs(cfg.corpus.inputs)}
    if stage == "vocab":
        paths: dict[str, Path | list[Path]] = {"corpus_manifest": corpus_manifest}
        if cfg.vocab.from_spm:
            paths["spm"] = Path(cfg.vocab.from_spm)
        return paths
    if stage == "pretraining-data":
        c = cfg.pretraining_data
        return {
            "corpus_manifest": Path(c.input) if c.input else corpus_manifest,
            "tokenizer": Path(c.tokenizer_dir) if c.tokenizer_dir else tokenizer,
        }
    if stage == "pretrain":
        return _pretrain_inputs(cfg, tokenizer)
    if stage == "finetune":
        from albert_exp.finetune import data_paths

        paths = dict(data_paths(cfg))
        if cfg.finetune.model_dir:
            paths["model"] = Path(cfg.finetune.model_dir)
        return paths
    if stage == "scratch":  # fine-tuning's inputs less the pretrained model
        from albert_exp.scratch import scratch_config

        return input_paths(scratch_config(cfg), "finetune")
    if stage == "baseline":  # the labelled split alone: no tokenizer, no model
        from albert_exp.finetune import data_paths

        return {k: v for k, v in data_paths(cfg).items() if k in ("train", "val", "test")}
    raise ValueError(f"no identity rule for stage {stage!r}")


def reached(cfg: Any, stage: str, results: dict[str, Any]) -> bool:
    """Whether a complete output of the same key is all that `cfg` asks for. Only pretraining has a setting
    outside its key that decides how far it goes (`max_steps`): an output stopped earlier is continued, not
    reused."""
    if stage != "pretrain":
        return True
    from albert_exp.pretrain import reached as pretrain_reached

    return pretrain_reached(cfg.pretrain, results)


def stage_inputs(cfg: Any, stage: str) -> dict[str, str]:
    """Content digests of what `stage` reads (a missing input digests as missing: the stage itself says so)."""
    out = {}
    for name, p in input_paths(cfg, stage).items():
        if isinstance(p, list):
            out[name] = hashlib.sha256("".join(file_digest(f) for f in p).encode()).hexdigest()
        else:
            out[name] = _digest_or_missing(p)
    return out


def key_of(cfg: Any, stage: str) -> str:
    """The key of `stage` under `cfg`: its own section(s), its inputs' digests, the seed and the code version.

    `scratch` is fine-tuning from random weights: the key of the `finetune` stage under scratch.scratch_config
    (fine-tuning's settings and data, the `model:` section instead of the pretrained weights), the one its run
    records. `baseline` (the CRF): its own section, the labelling settings of `finetune:` and the split."""
    if stage == "scratch":
        from albert_exp.scratch import scratch_config

        return key_of(scratch_config(cfg), "finetune")
    name = stage.replace("-", "_")
    sections: dict[str, Any] = {name: _section(cfg, name), "seed": cfg.seed}
    if stage == "baseline":
        sections["labelling"] = {k: getattr(cfg.finetune, k) for k in LABELLING}
    if stage == "pretraining-data":  # the two lengths default to pretrain's
        p = cfg.pretraining_data
        sections["lengths"] = [
            p.max_seq_length or cfg.pretrain.max_seq_length,
            p.max_predictions_per_seq or cfg.pretrain.max_predictions_per_seq,
        ]
    if (stage == "pretrain" and not cfg.pretrain.init_from) or (stage == "finetune" and not cfg.finetune.model_dir):
        sections["model"] = _section(cfg, "model")  # a fresh model: its architecture
    return stage_key(stage, sections, stage_inputs(cfg, stage))


def output_of(cfg: Any, stage: str, link: Path | None = None) -> StageOutput:
    """The StageOutput of `stage` under `cfg` (its key computed now)."""
    return StageOutput(link or cfg.stage_dir(stage), key_of(cfg, stage))
