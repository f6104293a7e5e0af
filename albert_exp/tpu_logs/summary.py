"""The ingest summary: what was parsed, what was skipped and why, and the run's headline numbers.

Plain functions over a ParseResult (no MLflow), so tests read them directly.
"""

from __future__ import annotations

from typing import Any

from albert_exp.tpu_logs.grammar import BLANK
from albert_exp.tpu_logs.tables import OVERLAP_RULE

# Flags of run_pretraining.py -> our config keys, so a TPU run lines up with local `pretrain` runs in the UI.
FLAG_TO_CONFIG = {
    "train_batch_size": "pretrain.batch_size",
    "learning_rate": "pretrain.learning_rate",
    "num_train_steps": "pretrain.num_train_steps",
    "num_warmup_steps": "pretrain.num_warmup_steps",
    "max_seq_length": "pretrain.max_seq_length",
    "max_predictions_per_seq": "pretrain.max_predictions_per_seq",
    "save_checkpoints_steps": "pretrain.save_checkpoints_steps",
    "iterations_per_loop": "pretrain.iterations_per_loop",
    "num_tpu_cores": "pretrain.num_tpu_cores",
    "init_checkpoint": "pretrain.init_from",
    "input_file": "pretrain.input",
    "output_dir": "pretrain.output_dir",
}


def _iso(t: Any) -> str | None:
    return None if t is None or str(t) == "NaT" else t.isoformat()


# The flags that tell two TPU runs apart; the summary warns when neither the log nor a command states them.
KEY_FLAGS = ("learning_rate", "train_batch_size", "num_train_steps")


def log_flags(result: Any) -> dict[str, str]:
    """Flags the log itself states: batch sizes (`***** Running training *****`), the estimator's `Using
    config` (output dir, checkpoint interval, iterations per loop, TPU cores), the checkpoint directory, and
    num_train_steps when training finished (run_pretraining.py trains to exactly that step)."""
    stated = dict(result.params)
    if len(result.checkpoints):
        stated.setdefault("output_dir", str(result.checkpoints["uri"].iloc[-1]).rsplit("/", 1)[0])
    loss = result.table[result.table["metric"] == "train/loss"]
    if result.finished and len(loss):
        stated["num_train_steps"] = str(int(loss["step"].max()))
    return stated


def run_params(result: Any, command_flags: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """MLflow params: the run's flags (`flags.*`), also mapped onto our config keys (`pretrain.*`) so that a
    TPU run lines up with local `pretrain` runs. Where the log states a flag it wins (it is what ran): a
    command echoed in the log, then the values the log shows (log_flags); a --command-file fills the rest.
    The merged flags stay on the result (the summary estimates the time left from num_train_steps).
    Returns (params, warnings about disagreements and about flags nobody states)."""
    flags = {**(command_flags or {}), **result.flags}
    warnings = []
    for key, value in log_flags(result).items():
        if key in flags and flags[key] != value:
            warnings.append(f"the command says {key}={flags[key]} but the log shows {value}; logging the log's")
        flags[key] = value
    result.flags = dict(flags)
    missing = [k for k in KEY_FLAGS if k not in flags]
    if missing:
        warnings.append(
            f"{', '.join(missing)}: not in the log and no --command-file given, so runs that differ in "
            "them look alike (pass the script that ran run_pretraining.py with --command-file)"
        )
    params = {f"flags.{k}": v for k, v in flags.items()}
    params.update({FLAG_TO_CONFIG[k]: v for k, v in flags.items() if k in FLAG_TO_CONFIG})
    if result.input_files:  # the files the glob matched, as the log listed them
        params["log.input_file_count"] = str(len(result.input_files))
        params["log.input_files"] = ",".join(result.input_files)
        params.setdefault("pretrain.input", params["log.input_files"])
    return params, warnings


def summarize(result: Any) -> dict[str, Any]:
    """What was parsed and skipped, then the headline figures (training_figures)."""
    table = result.table
    counts = dict(result.counts)
    lines = counts.pop("lines", 0)
    parsed = counts.pop("parsed", 0)
    return {
        "files": [f.path for f in result.files],
        "lines": lines,
        "lines_parsed": parsed,
        "lines_skipped": {k: v for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if k != BLANK},
        "blank_lines": counts.get(BLANK, 0),
        "points": len(table),
        "duplicates_collapsed": result.duplicates,
        "overlaps": {
            "rule": OVERLAP_RULE,
            "points_superseded": len(result.overlaps),
            "values_differ": int((result.overlaps["value"] != result.overlaps["value_superseded"]).sum()),
        },
        "metrics": sorted(table["metric"].unique().tolist()),
        "year_source": result.year_source,
        "timezone": result.timezone,
        "notes": list(result.notes),
        "unknown_examples": [x for f in result.files for x in f.parser.unknown_examples][:5],
        "last_error": next((f.parser.last_error for f in reversed(result.files) if f.parser.last_error), None),
        "finished": result.finished,
        "start_time": _iso(result.start_time),
        "end_time": _iso(result.end_time),
        "restarts": len(result.restarts),
        "restart_steps": [r["step"] for r in result.restarts][:50],
        "checkpoints": len(result.checkpoints),
        "last_checkpoint": result.checkpoints.iloc[-1]["uri"] if len(result.checkpoints) else None,
        **training_figures(table),
        **projection(table, result.flags, result.end_time),
        **last_eval(table),
    }


def training_figures(table: Any) -> dict[str, Any]:
    """Loss (first, last, best), median rates, and TPU-hours: the span of every attempt summed, so the gaps
    between restarts do not count."""
    out: dict[str, Any] = {}
    loss = table[table["metric"] == "train/loss"].sort_values("step")
    if len(loss):
        best = loss.loc[loss["value"].idxmin()]
        out.update(
            first_step=int(loss["step"].iloc[0]),
            last_step=int(loss["step"].iloc[-1]),
            first_loss=float(loss["value"].iloc[0]),
            last_loss=float(loss["value"].iloc[-1]),
            best_loss=float(best["value"]),
            best_loss_step=int(best["step"]),
        )
    for metric, key in (
        ("train/global_step_per_s", "global_step_per_s_median"),
        ("train/examples_per_s", "examples_per_s_median"),
    ):
        values = table.loc[table["metric"] == metric, "value"]
        if len(values):
            out[key] = float(values.median())
    timed = table.dropna(subset=["wall_time"])
    if len(timed):
        spans = timed.groupby("segment")["wall_time"].agg(["min", "max"])
        out["tpu_hours"] = round(float((spans["max"] - spans["min"]).dt.total_seconds().sum()) / 3600, 3)
    return out


def projection(table: Any, flags: dict[str, str], end_time: Any) -> dict[str, Any]:
    """Hours left to num_train_steps at the median step rate, and when that is from the log's last line."""
    import pandas as pd

    total = str(flags.get("num_train_steps", ""))
    loss_steps = table.loc[table["metric"] == "train/loss", "step"]
    rates = table.loc[table["metric"] == "train/global_step_per_s", "value"]
    if not total.isdigit() or not len(loss_steps) or not len(rates):
        return {}
    hours = round(max(0, int(total) - int(loss_steps.max())) / float(rates.median()) / 3600, 2)
    out: dict[str, Any] = {"estimated_hours_to_finish": hours}
    if end_time is not None:
        out["projected_finish"] = _iso(end_time + pd.Timedelta(hours=hours))
    return out


def last_eval(table: Any) -> dict[str, Any]:
    evals = table[table["metric"].str.startswith("eval/")]
    if not len(evals):
        return {}
    last = evals[evals["step"] == evals["step"].max()]
    return {
        "last_eval": {
            "step": int(last["step"].iloc[0]),
            **{m: float(v) for m, v in zip(last["metric"], last["value"], strict=True)},
        }
    }
