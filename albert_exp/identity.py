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

import functools
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent


def _git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=PACKAGE, capture_output=True, timeout=10, check=True).stdout


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`<commit>` of the checkout the package runs from, `<commit>-dirty+<hash>` when the package has uncommitted
    changes (the hash of those changes, so two different edits are two versions), or `albert-exp <version>`
    for an installed package outside git."""
    try:
        sha = _git("rev-parse", "HEAD").decode().strip()
        diff = _git("diff", "HEAD", "--binary", "--", str(PACKAGE))
        untracked = _git("ls-files", "--others", "--exclude-standard", "-z", "--", str(PACKAGE)).split(b"\0")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"albert-exp {version('albert-exp')}"
        except PackageNotFoundError:
            return "unknown"
    h = hashlib.sha256(diff)
    for name in sorted(u for u in untracked if u.endswith(b".py")):  # names relative to the package
        h.update(name)
        h.update((PACKAGE / name.decode()).read_bytes())
    dirty = bool(diff) or any(u.endswith(b".py") for u in untracked)
    return sha + (f"-dirty+{h.hexdigest()[:12]}" if dirty else "")


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (once per process for an unchanged file)."""
    st = Path(path).stat()
    return _file_digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_digest(path: str | Path, skip: tuple[str, ...] = ()) -> str:
    """sha256 over the relative names and contents of the files under a directory (or of one file)."""
    p = Path(path)
    if p.is_file():
        return file_digest(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file() and x.name not in skip):
        h.update(str(f.relative_to(p)).encode())
        h.update(bytes.fromhex(file_digest(f)))
    return h.hexdigest()


def stage_key(stage: str, sections: dict[str, Any], inputs: dict[str, str], code: str | None = None) -> str:
    """The key of a stage output: its own settings, its inputs' content digests, the code version."""
    payload = json.dumps(
        {"stage": stage, "sections": sections, "inputs": inputs, "code": code or code_version()},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


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


# ----------------------------------------------------------------------------------------------------------
# Output directories: one per key; the stage's own path is a link to the current one.


class StageOutput:
    """Where a stage with key `key` writes, under the link `link` (e.g. <workdir>/pretrain):

        <link> -> <name>@<key>          a symlink: what downstream stages and users open
        <name>@<key>/                   a complete output (results.json names its key); never modified again
        <name>@<key>.partial/           a computation in progress: a rerun with the same key resumes it

    The stage computes into `work` and `commit()` renames it when complete, then moves the link. A failed or
    killed rerun leaves the previous output and the link untouched; outputs of other keys keep their paths
    (which runs and results record), so they stay loadable."""

    def __init__(self, link: Path, key: str) -> None:
        self.link, self.key = Path(link).absolute(), key  # results record absolute paths: stable across cwd
        self.done = self.link.parent / f"{self.link.name}@{key}"
        self.work = self.link.parent / f"{self.link.name}@{key}.partial"

    def complete(self) -> dict[str, Any] | None:
        """results.json of a complete output with this key, or None."""
        path = self.done / "results.json"
        if not path.is_file():
            return None
        results = json.loads(path.read_text())
        return results if results.get("key") == self.key else None

    def start(self, fresh: bool = False) -> Path:
        """The work directory (kept from a killed run with the same key, for resuming, unless `fresh`)."""
        import shutil

        if fresh:
            shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True, exist_ok=True)
        return self.work

    def commit(self) -> Path:
        """Rename the work directory into place and point the link at it."""
        import os
        import time

        if self.done.exists():  # a forced rerun of the same key: the earlier output stays, renamed
            os.replace(self.done, self.done.with_name(f"{self.done.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}"))
        os.replace(self.work, self.done)
        self.point()
        return self.done

    def point(self) -> None:
        """Make the link name this output (atomically: a new symlink renamed over the old one)."""
        import os
        import time

        if self.link.exists() and not self.link.is_symlink():  # a directory from before this scheme
            os.replace(self.link, self.link.with_name(f"{self.link.name}@before-{time.strftime('%Y%m%dT%H%M%S')}"))
        tmp = self.link.with_name(f".{self.link.name}.link-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.done.name)
        os.replace(tmp, self.link)


def output_of(cfg: Any, stage: str, link: Path | None = None) -> StageOutput:
    """The StageOutput of `stage` under `cfg` (its key computed now)."""
    return StageOutput(link or cfg.stage_dir(stage), key_of(cfg, stage))
