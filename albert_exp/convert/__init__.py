"""`albert-exp convert`: ALBERT checkpoints between TF-Hub, google-research/albert (TF1) and Hugging Face.

    albert-exp convert hub-to-tf --source albert_base/ --out runs/init_tf
    albert-exp convert tf-to-hf  --source runs/init_tf/model.ckpt-0 --out runs/init_hf [--albert-config CFG]
    albert-exp convert hf-to-tf  --source runs/toy/pretrain/best --out runs/toy/tf_export

`hub-to-tf` gives a checkpoint google's run_pretraining.py can initialise from (prefix `module/` removed,
zero adam_m/adam_v, int64 global_step, SOP head added as zeros if missing). `tf-to-hf` / `hf-to-tf` map
between that layout and `AlbertForPreTraining`; both check the outputs numerically (see hf.py). Each writes
results.json into --out. Each writes into a fresh directory next to --out and renames it to --out only once
the numerical check passed: a failed conversion leaves an earlier --out and its results.json as they were.
An existing --out is replaced only when it is a conversion's own output: it holds MARKER (written last, listing
the files of that conversion) and nothing else; any other non-empty --out is refused (exit 2), never emptied.
Nothing heavy is imported here (the CLI's --help must stay fast).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SUBCOMMANDS = {
    "hub-to-tf": "TF-Hub module (or module/-prefixed checkpoint) -> trainable TF checkpoint",
    "tf-to-hf": "TF checkpoint or TF-Hub module -> Hugging Face AlbertForPreTraining dir",
    "hf-to-tf": "Hugging Face AlbertForPreTraining dir -> TF checkpoint + albert_config.json",
}
MARKER = ".albert-exp-convert.json"  # in every --out we write: which files are ours to replace


def add_arguments(parser: argparse.ArgumentParser) -> None:
    listing = "; ".join(f"{k}: {v}" for k, v in SUBCOMMANDS.items())
    parser.add_argument("direction", choices=list(SUBCOMMANDS), help=listing)
    parser.add_argument("--source", required=True, help="input checkpoint prefix, checkpoint dir or model dir")
    parser.add_argument("--out", required=True, help="output directory (results.json goes there too)")
    parser.add_argument(
        "--albert-config",
        default="",
        help="tf-to-hf: google's albert_config.json (default: the one next to the checkpoint)",
    )
    parser.add_argument("--global-step", default="0", help="hub-to-tf, hf-to-tf: value of global_step written")


def main(args: argparse.Namespace) -> dict:
    from albert_exp.errors import UserError
    from albert_exp.outputs import staged_output
    from albert_exp.tracking import write_results

    try:  # a string flag so MLproject can pass "" for the default
        step = int(args.global_step or 0)
    except ValueError:
        raise UserError(f"--global-step {args.global_step!r} is not an integer") from None

    out = Path(args.out)
    check_replaceable(out)
    with staged_output(out) as tmp:  # --out is replaced only by a checked conversion
        if args.direction == "hub-to-tf":
            from albert_exp.convert.tf_checkpoint import hub_to_tf

            result = hub_to_tf(args.source, tmp, global_step=step)
        elif args.direction == "tf-to-hf":
            from albert_exp.convert.hf import tf_to_hf

            result = tf_to_hf(args.source, tmp, albert_config=args.albert_config or None)
        else:
            from albert_exp.convert.hf import hf_to_tf

            result = hf_to_tf(args.source, tmp, global_step=step)
        result = {"direction": args.direction, **_moved(result, tmp, out)}
        write_results(tmp, result)
        mark_output(tmp)
    return result


def mark_output(out: Path) -> None:
    """Write MARKER into a finished conversion: the files in it, so that a later run replaces them and no more."""
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != MARKER)
    (out / MARKER).write_text(json.dumps({"written_by": "albert-exp convert", "files": files}, indent=1) + "\n")


def check_replaceable(out: Path) -> None:
    """--out is new, empty, or an earlier conversion's output holding only the files MARKER lists; anything else
    is someone's data, which replacing --out would delete."""
    from albert_exp.errors import UserError

    if not out.is_dir():
        return  # nothing there (a file in the way is refused by staged_output)
    present = sorted(str(p.relative_to(out)) for p in out.rglob("*") if not p.is_dir() and p.name != MARKER)
    if not present and not any(out.iterdir()):
        return
    try:
        ours = set(json.loads((out / MARKER).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        ours = None
    foreign = present if ours is None else [p for p in present if p not in ours]
    if ours is None or foreign:
        what = "was not written by `albert-exp convert`" if ours is None else "holds files a conversion did not write"
        raise UserError(
            f"--out {what} ({len(foreign)} such file(s), e.g. {foreign[0] if foreign else 'an empty folder'}); "
            "replacing it would delete them",
            where=str(out),
            fix="give a new or empty --out directory, or move those files elsewhere",
        )


def _moved(result: dict, tmp: Path, out: Path) -> dict:
    """Paths in the result as they will be once the staging directory is renamed to --out."""
    return {k: v.replace(str(tmp), str(out)) if isinstance(v, str) else v for k, v in result.items()}
