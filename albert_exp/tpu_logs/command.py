"""The exact google-research/albert `run_pretraining.py` command of an experiment, for a Cloud TPU.

    albert-exp tpu-logs command --config experiments/tpu_recipe.yaml > run_tpu.sh && bash run_tpu.sh
    albert-exp tpu-logs ingest tpu-recipe-*.log --command-file run_tpu.sh --experiment tpu-recipe

Steps, warm-up and learning rate come from `cfg.pretrain.scaled()` (the batch-size scaling rule of
albert_exp/scaling.py), so the TPU run and a local `pretrain` run of the same YAML train the same schedule.
The command runs in `{ set -x; ...; } 2>&1 | tee LOG` (stderr holds the training log; `set -x` echoes the
command into it, so the log states its flags); LOG carries a UTC timestamp so every restart writes its own
file and the date in its name tells `ingest` the year of the glog times.
"""

from __future__ import annotations

import shlex
import sys
from typing import Any

from albert_exp.errors import UserError


def flags_from_command(text: str) -> dict[str, str]:
    """`python3 -m albert.run_pretraining --a=1 --b 2 --use_tpu 2>&1 | tee x.log` -> {'a': '1', 'b': '2', ...}.

    Backslash continuations are joined; parsing stops at a redirection or a pipe.
    """
    text = text.replace("\\\r\n", " ").replace("\\\n", " ")
    try:
        tokens = shlex.split(text, comments=False)
    except ValueError:  # an unbalanced quote (a cut line): fall back to whitespace
        tokens = text.split()
    start = next((i for i, t in enumerate(tokens) if "run_pretraining" in t), None)
    if start is None:
        return {}
    flags: dict[str, str] = {}
    rest = tokens[start + 1 :]
    i = 0
    while i < len(rest):
        tok = rest[i]
        if tok in ("|", "||", "&&", ";", ">", ">>") or tok.startswith(("2>", "1>", ">", "|")):
            break
        if tok.startswith("--"):
            name, eq, value = tok[2:].partition("=")
            if not eq:
                nxt = rest[i + 1] if i + 1 < len(rest) else None
                if nxt is not None and not nxt.startswith("-") and nxt not in ("|", ">", "2>&1"):
                    value, i = nxt, i + 1
                else:  # absl boolean: --use_tpu / --nouse_tpu
                    value = "true"
            flags[name.replace("-", "_")] = value
        i += 1
    return flags


def run_pretraining_flags(cfg: Any) -> list[tuple[str, Any]]:
    """(flag, value) pairs in the order they are printed; True means a bare boolean flag."""
    p = cfg.pretrain
    s = p.scaled()
    albert_config = getattr(p, "albert_config", None)
    missing = [
        k
        for k, v in (
            ("pretrain.input", p.input),
            ("pretrain.output_dir", p.output_dir),
            ("pretrain.albert_config", albert_config),
            ("pretrain.tpu_name", p.tpu_name),
        )
        if not v
    ]
    if missing:
        raise UserError(
            f"a TPU run needs {', '.join(missing)}",
            where=cfg.source,
            fix="set them in the YAML (see experiments/tpu_recipe.yaml) or with --set KEY=VALUE",
        )
    if p.iterations_per_loop < 1:
        raise UserError("pretrain.iterations_per_loop must be >= 1", where=cfg.source)
    flags: list[tuple[str, Any]] = [
        ("input_file", ",".join(p.input)),
        ("output_dir", p.output_dir),
        ("albert_config_file", albert_config),
    ]
    if p.init_from:
        flags.append(("init_checkpoint", p.init_from))
    flags += [
        ("do_train", True),
        ("train_batch_size", s.batch_size),
        ("max_seq_length", p.max_seq_length),
        ("max_predictions_per_seq", p.max_predictions_per_seq),
        ("optimizer", "lamb"),
        ("learning_rate", s.learning_rate),
        ("num_train_steps", s.num_train_steps),
        ("num_warmup_steps", s.num_warmup_steps),
        ("save_checkpoints_steps", p.save_checkpoints_steps),
        ("iterations_per_loop", p.iterations_per_loop),
        ("use_tpu", True),
        ("tpu_name", p.tpu_name),
    ]
    flags += [(k, v) for k, v in (("tpu_zone", p.tpu_zone), ("gcp_project", p.gcp_project)) if v]
    flags.append(("num_tpu_cores", p.num_tpu_cores))
    return flags


def build_command(cfg: Any, log: str | None = None, python: str = "python3") -> str:
    """The shell command (with backslash continuations) ending in `2>&1 | tee LOG`."""
    flags = run_pretraining_flags(cfg)
    log = log or f"{cfg.name}-$(date -u +%Y%m%dT%H%M%SZ).log"  # unquoted on purpose: the shell fills the date
    # `set -x` inside the piped block prints the command into the log: `ingest` reads the flags from there.
    lines = ["{ set -x", f"{python} -m albert.run_pretraining \\"]
    for k, v in flags:
        lines.append(f"  --{k} \\" if v is True else f"  --{k}={shlex.quote(str(v))} \\")
    lines[-1] = lines[-1].removesuffix(" \\")
    lines.append(f"}} 2>&1 | tee {log}")
    return "\n".join(lines)


def notes(cfg: Any) -> list[str]:
    """Things worth a warning before spending TPU hours."""
    p = cfg.pretrain
    out = []
    values = [*p.input, p.output_dir or "", p.init_from or "", getattr(p, "albert_config", None) or ""]
    if any("YOUR_" in v for v in values):
        out.append("placeholders (YOUR_...) left in the config: replace them with your bucket and TPU")
    if any(v and not v.startswith("gs://") for v in [*p.input, p.output_dir or ""]):
        out.append("a Cloud TPU reads and writes only gs:// paths: input and output_dir should be gs:// URIs")
    if cfg.pretraining_data.compress or any(v.endswith((".gz", ".gzip")) for v in p.input):
        out.append(
            "GZIP TFRecords (pretraining_data.compress: true): google's run_pretraining.py reads plain TFRecords "
            "only; write them with compress: false, or gunzip them before the run"
        )
    if p.save_checkpoints_steps % p.iterations_per_loop:
        out.append(
            f"save_checkpoints_steps={p.save_checkpoints_steps} is not a multiple of iterations_per_loop="
            f"{p.iterations_per_loop}: TPUEstimator saves only at loop ends"
        )
    return out


def main(cfg: Any, log: str | None = None) -> dict[str, Any]:
    command = build_command(cfg, log)
    s = cfg.pretrain.scaled()
    print(
        f"# {cfg.name}: batch {s.batch_size} -> {s.num_train_steps:,} steps, {s.num_warmup_steps:,} warm-up, "
        f"lr {s.learning_rate:g} ({s.rule})"
    )
    print(f"# afterwards: albert-exp tpu-logs ingest {cfg.name}-*.log --experiment {cfg.name} --command-file THIS_FILE")
    print(command)
    for n in notes(cfg):
        print(f"note: {n}", file=sys.stderr)
    return {"print_json": False, "command": command}
