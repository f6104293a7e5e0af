"""One CLI, one table of commands: `albert-exp <stage> [options]` or `python -m albert_exp <stage>`.

    albert-exp corpus --config experiments/toy.yaml --toy
    albert-exp finetune --config experiments/toy.yaml --epochs 3 --set finetune.learning_rate=3e-4
    albert-exp main --config experiments/toy.yaml

Config stages take `--config` (an experiments/*.yaml), `--set KEY=VALUE` overrides and one typed flag per
field of their config section (`--learning-rate` is `finetune.learning_rate`). An empty value ("") means "as
in the config", so MLproject parameters can default to it. Bad input exits 2 with one line; `--debug` shows
the traceback. Stage modules are imported only when their command runs, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import gc
import importlib
import json
import os
import sys
import typing
from dataclasses import dataclass
from typing import Any

from albert_exp.errors import UserError


@dataclass(frozen=True)
class Command:
    module: str  # exposes run(cfg) -> dict; or, when section is None, add_arguments(parser) and main(args)
    help: str
    section: str | None = ""  # config section whose fields become flags; "" = top-level only; None = custom
    options: tuple[tuple[str, str], ...] = ()  # (--flag, help): passed to run(cfg, flag=value), not config keys
    stage: bool = False  # a declared stage (albert_exp/stages.py), run by albert_exp/executor.py; takes --rerun
    # a command that writes stage outputs holds its workdir's lock alone; search workers and promotions (each
    # with its own lock on what it shares) may run side by side
    shared_workdir: bool = False


# The table. tests/test_project.py keeps it, the MLproject entry points and the README in sync.
COMMANDS: dict[str, Command] = {
    "corpus": Command(
        "albert_exp.corpus", "shard a text corpus, or generate the toy corpus (--toy)", "corpus", stage=True
    ),
    "vocab": Command(
        "albert_exp.vocab", "train a SentencePiece vocabulary and a Hugging Face tokenizer", "vocab", stage=True
    ),
    "pretraining-data": Command(
        "albert_exp.pretraining_data",
        "make TFRecord shards for ALBERT pretraining (SOP, n-gram masking), in parallel or on Ray",
        "pretraining_data",
        stage=True,
    ),
    "pretrain": Command(
        "albert_exp.pretrain", "pretrain ALBERT (MLM + SOP, LAMB) on TFRecord shards", "pretrain", stage=True
    ),
    "convert": Command("albert_exp.convert", "convert ALBERT checkpoints: hub-to-tf, tf-to-hf, hf-to-tf", None),
    "finetune": Command(
        "albert_exp.finetune", "fine-tune ALBERT to tag the tokens of a phrase", "finetune", stage=True
    ),
    "scratch": Command(
        "albert_exp.scratch",
        "the same fine-tuning from random weights: the control for what pretraining buys",
        "finetune",
        stage=True,
    ),
    "baseline": Command(
        "albert_exp.baseline",
        "train and score the classic baseline: a linear-chain CRF on words",
        "baseline",
        stage=True,
    ),
    "curve": Command(
        "albert_exp.curve",
        "the label-efficiency curve: pretrained vs from scratch vs CRF on seeded subsets of the labelled split",
        "curve",
        stage=True,
    ),
    "tpu-logs": Command("albert_exp.tpu_logs.cli", "ingest console logs of a TPU pretraining run into MLflow", None),
    "tune": Command(
        "albert_exp.tune",
        "search the fine-tuning learning rate and epochs with Optuna (resumable, several workers on PostgreSQL)",
        "tune",
        stage=True,
        shared_workdir=True,
    ),
    "promote": Command(
        "albert_exp.promote",
        "register a model; move the `champion` alias only if it beats the champion on the same data",
        "promote",
        stage=True,
        shared_workdir=True,
    ),
    "predict": Command(
        "albert_exp.predict", "batch phrase extraction with a logged model (models:/<name>@champion)", None
    ),
    "main": Command(
        "albert_exp.pipeline",
        "run every stage of an experiment under one parent run (reusing outputs of the same identity)",
        "",
        (("--rerun", "STAGE[,STAGE]|all: compute these stages again even where an earlier output matches"),),
    ),
    "lineage": Command(
        "albert_exp.lineage", "print where a model or run came from: fine-tune -> pretrain -> data -> corpus", None
    ),
}


def _field_flags(parser: argparse.ArgumentParser, section: str) -> None:
    from albert_exp.config import ExperimentConfig, config_fields

    hints = typing.get_type_hints(ExperimentConfig)
    cls = hints[section]
    group = parser.add_argument_group(f"{section} settings (override the config's `{section}:` section)")
    sub_hints = typing.get_type_hints(cls)
    for name, f in config_fields(cls).items():
        tp = sub_hints[name]
        if dataclasses.is_dataclass(tp):
            continue
        flag = "--" + name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        choices = typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None
        help_text = f"default: {default!r}" + (f"; one of {', '.join(choices)}" if choices else "")
        help_text = f"{f.metadata['help']}; {help_text}" if "help" in f.metadata else help_text
        if tp is bool:
            group.add_argument(
                flag, dest=f"{section}.{name}", nargs="?", const="true", default=None, metavar="BOOL", help=help_text
            )
        else:
            group.add_argument(flag, dest=f"{section}.{name}", default=None, metavar=name.upper(), help=help_text)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="", help="experiment YAML (default: built-in defaults)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. finetune.epochs=3 (repeatable; space-separated pairs ok)",
    )
    parser.add_argument("--seed", dest="top.seed", default=None, help="random seed for every stage")
    parser.add_argument("--workdir", dest="top.workdir", default=None, help="outputs go to WORKDIR/<stage>/")
    parser.add_argument(
        "--jobs", dest="top.jobs", default=None, help="stages `main` runs side by side (0: what the machine allows)"
    )


def build_stage_parser(name: str, cmd: Command) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"albert-exp {name}", description=cmd.help)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    if cmd.section is None:
        importlib.import_module(cmd.module).add_arguments(parser)
        return parser
    _common(parser)
    for flag, help_text in cmd.options:
        parser.add_argument(flag, dest=f"option:{flag.lstrip('-').replace('-', '_')}", default="", help=help_text)
    if cmd.stage:
        parser.add_argument(
            "--rerun",
            action="store_true",
            help="compute again from the start even where a complete output of the same identity exists "
            "(default: reuse it, as `main` does)",
        )
    if cmd.section:
        _field_flags(parser, cmd.section)
    return parser


def config_from_args(args: argparse.Namespace):
    """Build the ExperimentConfig from --config, --set and the typed flags."""
    from albert_exp.config import load_config

    overrides: list[str] = []
    for raw in args.overrides:
        overrides.extend(p for p in raw.split() if p)  # MLproject passes all pairs in one string
    for dest, value in vars(args).items():
        if "." in dest and value not in (None, ""):
            key = dest.removeprefix("top.")
            overrides.append(f"{key}={value}")
    return load_config(args.config or None, overrides)


def _run_stage(name: str, cmd: Command, cfg: Any, rerun: bool) -> dict:
    from albert_exp import scheduler
    from albert_exp.executor import run_stage
    from albert_exp.locks import workdir_lock

    in_main = os.environ.pop(scheduler.IN_MAIN, "") == "1"  # started by `main --jobs`: a stage of its run
    with workdir_lock(cfg.root, name, shared=cmd.shared_workdir):
        result = run_stage(name, cfg, rerun=rerun, in_main=in_main)
    scheduler.write_result(result)
    return result.as_dict()


def _top_parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {n.ljust(width)}  {c.help}" for n, c in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="albert-exp",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pretrain ALBERT on your own corpus, fine-tune it to tag phrases, track it all in MLflow.",
        epilog=f"commands:\n{listing}\n\n`albert-exp <command> --help` shows a command's options.",
    )
    parser.add_argument("command", choices=list(COMMANDS), metavar="command")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    return parser


# Library progress bars and chatter that bury our own (weight loading, artifact downloads); users can re-enable.
QUIET_DEFAULTS = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "TOKENIZERS_PARALLELISM": "false",
}
# No network at run time: MLflow 3 sends usage telemetry from every process that imports it (and fetches its
# settings from a remote URL, 1 s timeouts); off unless the user turns it on (MLFLOW_DISABLE_TELEMETRY=false).
OFFLINE_DEFAULTS = {"MLFLOW_DISABLE_TELEMETRY": "true"}


# OSErrors that are about the user's machine, with what to do: one line and exit 2 like a UserError.
USER_ERRNOS = {
    errno.ENOSPC: "free disk space, or write the output elsewhere (--workdir / the output_dir setting)",
    errno.EDQUOT: "free space in your quota, or write the output elsewhere",
    errno.EFBIG: "the file size limit (ulimit -f) is reached: raise it, or write smaller shards",
    errno.EROFS: "the file system is read-only: write the output elsewhere (--workdir / the output_dir setting)",
    errno.EACCES: "you cannot write there: fix the permissions, or write the output elsewhere",
    errno.EPERM: "you cannot write there: fix the permissions, or write the output elsewhere",
}


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if argv is None:  # a command (not a call from Python): the interpreter exits next
        # its last collections walk every object MLflow's import made: ~0.8 s of the user's wait. Frozen, they
        # are skipped; objects are still freed (files flushed) and the memory goes back to the OS as ever.
        gc.freeze()
    return code


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for key, value in {**QUIET_DEFAULTS, **OFFLINE_DEFAULTS}.items():
        os.environ.setdefault(key, value)
    top = _top_parser().parse_args(argv[:1] or ["--help"])
    cmd = COMMANDS[top.command]
    parser = build_stage_parser(top.command, cmd)
    args = parser.parse_args(argv[1:])
    try:
        module = importlib.import_module(cmd.module)
        if cmd.section is None:
            result = module.main(args)
        elif cmd.stage:  # main's rule: one executor for a stage, alone or in `main`
            result = _run_stage(top.command, cmd, config_from_args(args), args.rerun)
        else:
            options = {k.removeprefix("option:"): v for k, v in vars(args).items() if k.startswith("option:")}
            result = module.run(config_from_args(args), **options)
    except UserError as exc:
        if args.debug:
            raise
        print(f"error: {exc.format()}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a full disk or a read-only directory is the user's to fix, not a bug
        if args.debug or exc.errno not in USER_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror} ({USER_ERRNOS[exc.errno]})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    from albert_exp import ranks

    if isinstance(result, dict) and result.get("print_json", True) and ranks.is_main():  # one printout a job
        print(json.dumps({k: v for k, v in result.items() if k != "print_json"}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
