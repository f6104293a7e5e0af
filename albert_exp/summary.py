"""What `main` tells a user first, where the MLflow UI shows it without a click.

The parent run's description and the experiment's description (the banner above the runs table; MLflow keeps
both in the tag `mlflow.note.content`) get one markdown summary: the champion and its test metrics, the search's
best learning rate and epochs, pretrained vs from scratch (and the CRF baseline when it ran), with links to the
runs, and the label-efficiency curve's sentence and table when the `curve` stage ran. The parent run gets
`gain/test/<metric>` = pretrained minus from-scratch on the test split. `make demo` prints the same text.
Everything here but `publish` is a plain function of the stages' results.
"""

from __future__ import annotations

from typing import Any

NOTE = "mlflow.note.content"  # the run's / experiment's description in the MLflow UI
# MLflow 3 opens an experiment in its GenAI view unless it is marked as model training
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
UI = "http://127.0.0.1:5000"

# (results key, label) of the candidates in the table, in this order; missing ones are left out
CANDIDATES = (
    ("finetune", "ALBERT pretrained"),
    ("scratch", "ALBERT from scratch"),
    ("baseline", "CRF baseline"),
    ("tune", "best trial"),
)
# test metrics shown as columns, in this order, where at least one candidate has them
COLUMNS = (
    "token_accuracy",
    "phrase_f1",
    "seen_phrase_recall",
    "unseen_phrase_recall",
    "unseen_phrase_f1",
    "negative_fp_rate",
)


def runs_url(experiment_id: str | None, base: str = UI) -> str:
    """The runs table of an experiment in MLflow's model-training view (not the GenAI overview)."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


Where = str | dict[str, str] | None  # the experiment of every run (a dict: run id -> experiment id, "" default)


def _run_link(where: Where, run_id: str | None, text: str = "run") -> str:
    """A link the UI opens: to the run in its own experiment (a reused run may live in another one)."""
    if not run_id:
        return ""
    experiment_id = where.get(run_id, where.get("")) if isinstance(where, dict) else where
    if not experiment_id:
        return f"`{run_id[:8]}`"
    return f"[{text}](#/experiments/{experiment_id}/runs/{run_id})"


def _test(res: dict[str, Any] | None) -> dict[str, float]:
    """A stage result's test metrics without the `test/` prefix (the tune result keeps its best trial's)."""
    return {k[5:]: float(v) for k, v in (res or {}).items() if k.startswith("test/") and isinstance(v, int | float)}


# the test figures where more is better: a difference of two of them is a gain (a difference of losses, of
# false-positive rates, of all-negative baselines or of mention counts is not)
GAINS = (
    "token_accuracy",
    "phrase_precision",
    "phrase_recall",
    "phrase_f1",
    "overlap_recall",
    "word_accuracy",
    "seen_phrase_recall",
    "unseen_phrase_recall",
    "unseen_phrase_precision",
    "unseen_phrase_f1",
)


def gains(pretrained: dict[str, Any], scratch: dict[str, Any]) -> dict[str, float]:
    """`gain/test/<metric>`: the pretrained fine-tune minus the from-scratch one, for every test figure where
    more is better that both have."""
    a, b = _test(pretrained), _test(scratch)
    return {f"gain/test/{k}": a[k] - b[k] for k in GAINS if k in a and k in b}


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def _trial(tuned: dict[str, Any]) -> str:
    p = tuned.get("best_params", {})
    lr, ep = p.get("learning_rate"), p.get("epochs")
    return f"trial {tuned.get('best_trial')} lr={lr:.3g} epochs={ep}" if lr is not None else "–"


def champion_run(results: dict[str, Any]) -> str | None:
    """The run whose model is champion now, where this `main` registered it."""
    pr = results.get("promote") or {}
    for decision in pr.get("decisions") or [pr]:  # each candidate this promotion registered, in turn
        if decision and str(decision.get("version")) == str(pr.get("champion_version")):
            return decision.get("source_run_id")
    return None


def headline(name: str, results: dict[str, Any]) -> str:
    """One line with the three answers: the experiment's banner shows only its first line until expanded."""
    pr, tuned, ft, sc = (results.get(k) for k in ("promote", "tune", "finetune", "scratch"))
    parts = []
    if pr:
        m, run = pr.get("champion_metrics", {}), champion_run(results)
        who = {(ft or {}).get("run_id"): "ALBERT pretrained", (tuned or {}).get("mlflow_run_id"): "best trial"}
        label = f" ({who[run]})" if run in who and run else ""
        acc, f1 = _fmt(m.get("token_accuracy")), _fmt(m.get("phrase_f1"))
        parts.append(f"**Champion** v{pr['champion_version']}{label}: test token acc {acc}, phrase F1 {f1}")
    if tuned and tuned.get("best_params"):
        p = tuned["best_params"]
        parts.append(f"**best lr** {p['learning_rate']:.3g}, **epochs** {p['epochs']} (trial {tuned['best_trial']})")
    if ft and sc:
        g = gains(ft, sc)
        acc, f1 = g.get("gain/test/token_accuracy"), g.get("gain/test/phrase_f1")
        parts.append(
            "**pretraining gain** vs scratch: "
            + ", ".join(f"{k} {v:+.4f}" for k, v in (("acc", acc), ("F1", f1)) if v is not None)
        )
    parts += _curve_headline(results.get("curve"))
    return f"{name}: " + " · ".join(parts) if parts else f"{name}: no candidate finished"


def _curve_headline(curve: dict[str, Any] | None) -> list[str]:
    """The curve's answer in a few words: how many times the labels pretraining is worth."""
    if not curve or curve.get("reference_f1") is None:
        return []
    if len({p["budget"] for p in curve.get("points", [])}) < 2:  # one budget: a comparison (its sentence), no curve
        return []
    k, x = curve.get("labels_worth"), curve["reference_f1"]
    if k is None:
        return [f"**pretraining** never reaches scratch's F1 {x:.3f} with the most labels"]
    return [f"**pretraining worth** ~{k:.2g}× the labels at F1 {x:.3f}"]


def _curve_section(curve: dict[str, Any] | None, experiment_id: Where) -> list[str]:
    """The label-efficiency curve (albert_exp/curve.py): its sentence and its table, with a link to its run."""
    if not curve or not curve.get("table"):
        return []
    link = _run_link(experiment_id, curve.get("run_id"), "the curve's run")
    said = f": {curve['sentence']}." if curve.get("sentence") else "."
    return ["", f"**Label efficiency** ({link or 'curve'}){said}", "", curve["table"]]


def _details(results: dict[str, Any], experiment_id: Where) -> list[str]:
    """One bullet per answer: the champion, the best fine-tuning settings, the pretraining gain."""
    lines = []
    pr, tuned, ft, sc = (results.get(k) for k in ("promote", "tune", "finetune", "scratch"))
    if pr:
        m = pr.get("champion_metrics", {})
        link = _run_link(experiment_id, champion_run(results), "its run")
        lines.append(
            f"- **Champion**: `{pr['model_name']}` v{pr['champion_version']} ({link or 'an earlier run'}): "
            f"test token accuracy {_fmt(m.get('token_accuracy'))}, phrase F1 {_fmt(m.get('phrase_f1'))}. "
            f"This run's challenger: {pr.get('decision', '')} ({pr.get('why', '')})."
        )
    if tuned:
        lines.append(
            f"- **Best fine-tuning settings**: {_trial(tuned)} "
            f"({tuned.get('objective', 'val')} {_fmt(tuned.get('best_value'))}; "
            f"{tuned.get('n_complete', '?')} complete, {tuned.get('n_pruned', '?')} pruned)."
        )
    if ft and sc:
        g = gains(ft, sc)
        shown = ", ".join(f"{k[10:].replace('_', ' ')} {v:+.4f}" for k, v in g.items() if k[10:] in COLUMNS)
        lines.append(f"- **Pretraining gain** (pretrained − from scratch, test split): {shown}.")
    return lines


def _candidates_table(results: dict[str, Any], experiment_id: Where) -> list[str]:
    """One row per candidate that finished, one column per test metric that some candidate has."""
    rows = [(label, results[key]) for key, label in CANDIDATES if results.get(key)]
    cols = [c for c in COLUMNS if any(c in _test(r) for _, r in rows)]
    if not (rows and cols):
        return []
    lines = ["", "| candidate (test split) | " + " | ".join(cols) + " | run |", "|---" * (len(cols) + 2) + "|"]
    for label, r in rows:
        if label == "best trial":
            label = f"best trial ({_trial(r)})"
        test = _test(r)
        run_id = r.get("mlflow_run_id") if label.startswith("best trial") else r.get("run_id")
        cells = " | ".join(_fmt(test.get(c)) for c in cols)
        lines.append(f"| {label} | {cells} | {_run_link(experiment_id, run_id)} |")
    return lines


def markdown(name: str, results: dict[str, Any], experiment_id: Where = None) -> str:
    """The summary as markdown: the headline, details, then one table row per candidate."""
    lines = [headline(name, results), "", *_details(results, experiment_id), *_candidates_table(results, experiment_id)]
    lines += _curve_section(results.get("curve"), experiment_id)
    if experiment_id and results.get("parent_run_id"):
        lines += ["", f"Parent run: {_run_link(experiment_id, results['parent_run_id'], results['parent_run_id'])}."]
    return "\n".join(lines)


def plain(text: str) -> str:
    """The markdown summary as a terminal shows it: no emphasis or link syntax (a run link becomes the run's
    short id), the table as aligned columns."""
    import re

    text = re.sub(r"\[([^\]]*)\]\(#/experiments/\d+/runs/([0-9a-f]+)\)", lambda m: _short(m[1], m[2]), text)
    text = text.replace("**", "").replace("`", "")
    out, table = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                table.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if table:
            widths = [max(len(r[i]) for r in table if i < len(r)) for i in range(len(table[0]))]
            out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in table]
            table = []
        out.append(line)
    return "\n".join(out).rstrip()


def _short(text: str, run_id: str) -> str:
    return run_id[:8] if text in ("run", run_id) else f"{text} ({run_id[:8]})"


def _experiments_of(results: dict[str, Any]) -> dict[str, str]:
    """The experiment of every run the results name (a reused run lives where it was computed)."""
    from albert_exp.tracking import get_run

    ids = {v for r in results.values() if isinstance(r, dict) for k, v in r.items() if k.endswith("run_id") and v}
    for r in results.values():
        for d in (r.get("decisions") or []) if isinstance(r, dict) else []:
            ids.add(d.get("source_run_id"))
    return {i: run.experiment_id for i in ids - {None} if (run := get_run(i)) is not None}


def _champion_now(results: dict[str, Any]) -> str:
    """A line when the registry's champion is no longer the one this run's promotion left (another run moved
    it meanwhile); nothing otherwise."""
    from albert_exp.tracking import Registry

    pr = results.get("promote") or {}
    if not pr.get("model_name"):
        return ""
    now = Registry().by_alias(pr["model_name"], "champion")
    if now is None or str(now.version) == str(pr.get("champion_version")):
        return ""
    return f"\n\nThe registry's champion is now v{now.version} (moved after this run's promotion)."


def publish(parent: Any, name: str, results: dict[str, Any]) -> str:
    """Gain metrics and the note on the parent run, the note and the model-training kind on the experiment."""
    from albert_exp.tracking import set_experiment_tags

    if results.get("finetune") and results.get("scratch"):
        parent.log_metrics(gains(results["finetune"], results["scratch"]), step=0)
    text = markdown(name, results, {"": parent.experiment_id, **_experiments_of(results)}) + _champion_now(results)
    parent.set_tags({NOTE: text})
    if parent.experiment_id:
        set_experiment_tags(parent.experiment_id, {NOTE: text, **EXPERIMENT_KIND})
    return text
