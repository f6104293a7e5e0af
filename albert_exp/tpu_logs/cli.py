"""`albert-exp tpu-logs ingest LOG... | command --config YAML`: console logs of a TPU run -> MLflow.

    albert-exp tpu-logs ingest pretrain-*.log --experiment tpu-recipe --run-name "base-v2 b512"
    albert-exp tpu-logs ingest pretrain-*.log.gz --year 2020 --timezone Europe/Berlin
    albert-exp tpu-logs ingest pretrain-4.log --append                # a new restart's log, same run
    albert-exp tpu-logs ingest pretrain-4.log --follow --idle-exit 3600
    albert-exp tpu-logs command --config experiments/tpu_recipe.yaml > run_tpu.sh

Only argparse is imported here; the work happens in the modules imported by `main`.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

from albert_exp.errors import UserError
from albert_exp.files import expand_files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["ingest", "command"],
        help="ingest: parse logs into an MLflow run; command: print the TPU command of a config",
    )
    parser.add_argument(
        "logs",
        nargs="*",
        metavar="LOG",
        help="log files (plain, .gz, CRLF; globs ok; several files = restarts of one run)",
    )
    g = parser.add_argument_group("ingest")
    g.add_argument(
        "--experiment", default="", help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME or tpu-pretraining)"
    )
    g.add_argument("--run-name", default="", help="run name (default: tpu-logs <first file>)")
    g.add_argument("--year", default="", help="year of the first glog time when the log has no full dates")
    g.add_argument("--timezone", default="UTC", help="time zone of the TPU host's clock (IANA name)")
    g.add_argument("--command-file", default="", help="the script that ran run_pretraining.py: its flags become params")
    g.add_argument(
        "--append",
        action="store_true",
        help="add new files to the latest tpu-logs run (of --run-name if given) without duplicating steps",
    )
    g.add_argument("--run-id", default="", help="the run to append to or follow into")
    g.add_argument("--out", default="", help="where tables, plot and results.json go (default: runs/tpu_logs/<digest>)")
    g.add_argument("--follow", action="store_true", help="keep tailing the last file and log new points")
    g.add_argument("--poll", type=float, default=5.0, help="--follow: seconds between reads")
    g.add_argument(
        "--idle-exit",
        type=float,
        default=None,
        help="--follow: stop after this many seconds without new lines (default: never)",
    )
    g.add_argument("--max-seconds", type=float, default=None, help="--follow: stop after this many seconds")
    g.add_argument(
        "--finish-wait",
        type=float,
        default=None,
        help="--follow: after the end-of-training lines, stop once the log is quiet this long (the --do_eval "
        "evaluation prints after them; default 300; no wait when the command has no --do_eval)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    c = parser.add_argument_group("command")
    c.add_argument("--config", default="", help="experiment YAML whose `pretrain:` section gives the flags")
    c.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable)",
    )
    c.add_argument("--log", default="", help="log file for `tee` (default: <name>-<UTC time>.log)")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n")[1]  # the examples above
    # Options may come between the log files (`ingest a.log --year 2020 b.log`): argparse's intermixed mode.
    parser.parse_args = functools.partial(argparse.ArgumentParser.parse_intermixed_args, parser)


def expand_logs(values: list[str]) -> list[str]:
    """Files as given; globs expanded (MLflow passes parameters quoted); one string of several paths split."""
    files = expand_files(
        values,
        what="log file",
        where="tpu-logs",
        fix="give the files the TPU run wrote (check the path or glob; quote globs in the shell)",
    )
    return [str(f) for f in files]


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.action == "command":
        from albert_exp.cli import config_from_args
        from albert_exp.tpu_logs.command import main as command_main

        if args.logs:
            raise UserError("`command` takes no log files", fix="albert-exp tpu-logs command --config YAML")
        args.overrides = list(args.overrides)
        return command_main(config_from_args(args), args.log or None)
    logs = expand_logs(args.logs)
    if not logs:
        raise UserError("no log files given", fix="albert-exp tpu-logs ingest LOG [LOG...]")
    year = None
    if args.year not in ("", None):
        if not str(args.year).isdigit() or not 1970 <= int(args.year) <= 2100:
            raise UserError(f"--year {args.year!r} is not a year", fix="e.g. --year 2020")
        year = int(args.year)
    kwargs = dict(
        experiment=args.experiment or None,
        run_name=args.run_name or None,
        year=year,
        timezone=args.timezone or "UTC",
        command_file=args.command_file or None,
        append=args.append,
        run_id=args.run_id or None,
        out_dir=args.out or None,
        progress=not args.no_progress,
    )
    if args.follow:
        from albert_exp.tpu_logs.follow import follow

        if args.poll <= 0:
            raise UserError("--poll must be > 0")
        wait = {} if args.finish_wait is None else {"finish_wait_s": args.finish_wait}
        return follow(logs, poll_s=args.poll, idle_exit_s=args.idle_exit, max_s=args.max_seconds, **wait, **kwargs)
    from albert_exp.tpu_logs.ingest import ingest

    return ingest(logs, **kwargs)
