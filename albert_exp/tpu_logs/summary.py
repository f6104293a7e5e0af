"""The ingest summary: what was parsed, what was skipped and why, and the run's headline numbers.

Plain functions over a ParseResult (no MLflow), so tests read them directly.
"""

from __future__ import annotations

from typing import Any

from albert_exp.tpu_logs.grammar import BLANK

# Flags of run_pretraining.py -> our config keys, so a TPU run lines up with local `pretrain` runs in the UI.
FLAG_TO_CONFIG = {
    "train_batch_size": "pretrain.batch_size",
    "learning_rate": "pretrain.learning_rate",
    "num_train_steps": "pretrain.num_train_steps",
    "num_warmup_steps": "pretrain.num_warmup_steps",
    "max_seq_length": "pretrain.max_seq_length",
    "max_predictions_per_seq": "pretrain.max_predictions_per_seq",
    "save_checkpoints_steps": "pretrain.save_checkpoints_steps",
    "init_checkpoint": "pretrain.init_from",
    "input_file": "pretrain.input",
    "output_dir": "pretrain.output_dir",
}


def _iso(t: Any) -> str | None:
    return None if t is None or str(t) == "NaT" else t.isoformat()


def run_params(result: Any, command_flags: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """MLflow params: the command's flags (`flags.*`), else what the log's own lines reveal, mapped onto our
    config keys (`pretrain.*`). A command echoed in the log wins over a command file (it is what ran), and
    the merged flags stay on the result (the summary estimates the time left from num_train_steps).
    Returns (params, warnings about disagreements)."""
    flags = dict(command_flags or {})
    flags.update(result.flags)
    result.flags = dict(flags)
    warnings = []
    for key, value in result.params.items():  # batch sizes the log printed: what really ran
        if key in flags and flags[key] != value:
            warnings.append(f"the command says {key}={flags[key]} but the log shows {value}; logging the log's")
        flags[key] = value
    params = {f"flags.{k}": v for k, v in flags.items()}
    params.update({FLAG_TO_CONFIG[k]: v for k, v in flags.items() if k in FLAG_TO_CONFIG})
    if result.input_files:  # the files the glob matched, as the log listed them
        params["log.input_file_count"] = str(len(result.input_files))
        params["log.input_files"] = ",".join(result.input_files)
        params.setdefault("pretrain.input", params["log.input_files"])
    return params, warnings


def summarize(result: Any) -> dict[str, Any]:
    table = result.table
    loss = table[table["metric"] == "train/loss"].sort_values("step")
    rates = table[table["metric"] == "train/global_step_per_s"]["value"]
    examples = table[table["metric"] == "train/examples_per_s"]["value"]
    counts = dict(result.counts)
    lines = counts.pop("lines", 0)
    parsed = counts.pop("parsed", 0)
    out: dict[str, Any] = {
        "files": [f.path for f in result.files],
        "lines": lines,
        "lines_parsed": parsed,
        "lines_skipped": {k: v for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if k != BLANK},
        "blank_lines": counts.get(BLANK, 0),
        "points": len(table),
        "duplicates_collapsed": result.duplicates,
        "superseded_by_restart": result.superseded,
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
    }
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
    if len(rates):
        out["global_step_per_s_median"] = float(rates.median())
    if len(examples):
        out["examples_per_s_median"] = float(examples.median())
    # TPU time: the span of every segment (restart) summed, so the gaps between restarts do not count.
    timed = table.dropna(subset=["wall_time"])
    if len(timed):
        spans = timed.groupby("segment")["wall_time"].agg(["min", "max"])
        out["tpu_hours"] = round(float((spans["max"] - spans["min"]).dt.total_seconds().sum()) / 3600, 3)
    total = result.flags.get("num_train_steps")
    if total and str(total).isdigit() and "global_step_per_s_median" in out and len(loss):
        left = max(0, int(total) - out["last_step"])
        out["estimated_hours_to_finish"] = round(left / out["global_step_per_s_median"] / 3600, 2)
    evals = table[table["metric"].str.startswith("eval/")]
    if len(evals):
        last = evals[evals["step"] == evals["step"].max()]
        out["last_eval"] = {
            "step": int(last["step"].iloc[0]),
            **{m: float(v) for m, v in zip(last["metric"], last["value"], strict=True)},
        }
    return out
