"""Reading and writing TF1 name-based checkpoints (what google-research/albert restores), and `hub-to-tf`.

TensorFlow is imported only inside these functions (it takes seconds). Checkpoints are written with the
`SaveV2` op, which produces exactly the `.index` + `.data-*` pair `tf.compat.v1.train.Saver` would, plus a
`checkpoint` state file so `tf.train.latest_checkpoint(dir)` finds it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from albert_exp.convert import mapping
from albert_exp.errors import UserError


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up banner off the console
    from albert_exp.extras import require

    with quiet_native_stderr():
        return require("tf", "reading or writing TensorFlow checkpoints")


@contextmanager
def quiet_native_stderr():
    """TensorFlow's C++ side (absl) logs to file descriptor 2 whatever TF_CPP_MIN_LOG_LEVEL says (e.g. "All log
    messages before absl::InitializeLog()..." and a line per failed read): keep that off the user's console,
    where our own one-line error says what happened. Python's sys.stderr is untouched."""
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def resolve_checkpoint(path: str | Path) -> str:
    """A checkpoint prefix from: a prefix (`.../model.ckpt-1000`), a directory with a `checkpoint` file or a
    single `*.index`, or a TF-Hub module directory (`variables/variables.index`)."""
    p = Path(path)
    if Path(f"{p}.index").is_file():
        return str(p)
    if p.is_dir():
        if (p / "variables" / "variables.index").is_file():
            return str(p / "variables" / "variables")
        if (p / "checkpoint").is_file():
            latest = _tf().train.latest_checkpoint(str(p))
            if latest:
                return latest
        indexes = sorted(p.glob("*.index"))
        if len(indexes) == 1:
            return str(indexes[0].with_suffix(""))
        if indexes:
            raise UserError(
                f"{len(indexes)} checkpoints in the directory",
                where=str(p),
                fix="give the prefix of one, e.g. " + str(indexes[-1].with_suffix("")),
            )
    raise UserError(
        "no TF checkpoint found",
        where=str(p),
        fix="give a checkpoint prefix (model.ckpt-N), its directory, or a TF-Hub module directory",
    )


def is_tf_checkpoint(path: str | Path) -> bool:
    try:
        resolve_checkpoint(path)
    except UserError:
        return False
    return True


def read_variables(path: str | Path) -> dict[str, np.ndarray]:
    """Every variable of a checkpoint as numpy (names as stored, `module/` prefix included)."""
    tf = _tf()
    prefix = resolve_checkpoint(path)
    try:  # a truncated or corrupt .index or .data file fails in either call
        with quiet_native_stderr():
            reader = tf.train.load_checkpoint(prefix)
            return {name: np.asarray(reader.get_tensor(name)) for name in reader.get_variable_to_shape_map()}
    except Exception as exc:  # TF raises its own DataLossError/NotFoundError/OutOfRangeError types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot read the checkpoint ({type(exc).__name__}: {first[:200]})",
            where=prefix,
            fix="the .index/.data-* files are truncated or corrupt: copy them again",
        ) from None


def write_checkpoint(prefix: str | Path, variables: dict[str, np.ndarray]) -> str:
    """Write a TF1 name-based checkpoint at `prefix` (e.g. out/model.ckpt-0). Returns the prefix."""
    tf = _tf()
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(variables)
    tensors = [tf.constant(np.asarray(variables[n])) for n in names]
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
    state = f'model_checkpoint_path: "{prefix.name}"\nall_model_checkpoint_paths: "{prefix.name}"\n'
    (prefix.parent / "checkpoint").write_text(state)
    return str(prefix)


def find_albert_config(path: str | Path) -> Path | None:
    """google ships albert_config.json next to the checkpoint (or one level up from a module's variables)."""
    p = Path(path)
    for d in (p if p.is_dir() else p.parent, (p if p.is_dir() else p.parent).parent, p / "assets"):
        if (d / "albert_config.json").is_file():
            return d / "albert_config.json"
    return None


def hub_to_tf(source: str | Path, out_dir: str | Path, global_step: int = 0) -> dict:
    """A TF-Hub ALBERT module (or a checkpoint saved with the `module/` prefix) -> a checkpoint that
    google's run_pretraining.py can `--init_checkpoint` from: no prefix, zero adam_m/adam_v for every
    trainable variable, an int64 global_step, and the SOP head as zeros when the module lacks it."""
    raw = read_variables(source)
    prefixed = sum(n.startswith(mapping.HUB_PREFIX) for n in raw)
    variables = mapping.model_variables(raw)
    groups, inner = mapping.count_groups(variables)
    known = {e.tf for e in mapping.name_map(groups, inner)}
    unknown = sorted(set(variables) - known)
    if unknown:
        raise UserError(
            f"{len(unknown)} variables are not ALBERT's, e.g. {unknown[0]}",
            where=str(source),
            fix="give an ALBERT module or checkpoint (variables under bert/ and cls/)",
        )
    added = mapping.add_missing_sop_head(variables)
    full = mapping.with_optimizer_slots(variables, global_step)
    out = Path(out_dir)
    prefix = write_checkpoint(out / f"model.ckpt-{global_step}", full)
    config = find_albert_config(source)
    if config is not None:
        (out / "albert_config.json").write_text(config.read_text())
    # Read it back: every model variable must come out bit-identical.
    back = read_variables(prefix)
    for name, value in variables.items():
        if back[name].shape != value.shape or not np.array_equal(back[name], value):
            raise RuntimeError(f"hub-to-tf wrote {name} wrongly")  # a bug here, not bad input
    return {
        "checkpoint": prefix,
        "model_variables": len(variables),
        "total_variables": len(full),
        "stripped_prefix": prefixed,
        "added_sop_head": added,
        "global_step": global_step,
        "albert_config": str(out / "albert_config.json") if config else None,
    }
