"""The label-efficiency curve as people read it, from the test figures of its points: plain functions, no MLflow.

    rows = [{"budget": 100, "seed": 0, "candidate": "pretrained", "phrase_f1": 0.55, "negative_fp_rate": 0.2}, ...]
    stats = aggregate(rows)                  # {candidate: {budget: {metric: (mean, spread)}}}
    print(tables(stats, n_train))            # markdown: budget x candidate, mean ± spread
    print(sentence(stats, n_train, 48_000))  # "pretraining on 48,000 unlabelled lines is worth ~3× the labels ..."
    fig = figure(stats, n_train)             # F1 and negative FP rate against labelled reviews, log x

The spread is the sample standard deviation over the seeds (0 with one seed).
"""

from __future__ import annotations

import statistics
from typing import Any

LABELS = {"pretrained": "ALBERT pretrained", "scratch": "ALBERT from scratch", "crf": "CRF baseline"}
METRICS = {"phrase_f1": "test phrase F1", "negative_fp_rate": "test false-positive rate on negative reviews"}

Stats = dict[str, dict[int, dict[str, tuple[float, float]]]]


def aggregate(rows: list[dict[str, Any]]) -> Stats:
    """Mean and spread over the seeds of each metric, per candidate and budget."""
    values: dict[tuple[str, int, str], list[float]] = {}
    for r in rows:
        for m in METRICS:
            if r.get(m) is not None:
                values.setdefault((r["candidate"], int(r["budget"]), m), []).append(float(r[m]))
    out: Stats = {}
    for (cand, budget, m), vs in sorted(values.items()):
        spread = statistics.stdev(vs) if len(vs) > 1 else 0.0
        out.setdefault(cand, {}).setdefault(budget, {})[m] = (statistics.fmean(vs), spread)
    return out


def as_rows(stats: Stats) -> list[dict[str, Any]]:
    """The stats as JSON rows (results.json keys must be strings): one per candidate and budget."""
    rows = []
    for cand, by_budget in stats.items():
        for budget, ms in sorted(by_budget.items()):
            row: dict[str, Any] = {"candidate": cand, "budget": budget}
            for m, (mean, spread) in ms.items():
                row.update({f"{m}_mean": mean, f"{m}_spread": spread})
            rows.append(row)
    return rows


def _budget_label(budget: int, n_train: int) -> str:
    return f"{budget:,} (all)" if budget == n_train else f"{budget:,}"


def table(stats: Stats, n_train: int, metric: str = "phrase_f1") -> str:
    """Markdown: one row per budget, one column per candidate, `mean ± spread` of `metric`."""
    cands = [c for c in LABELS if c in stats]
    budgets = sorted({b for c in cands for b in stats[c]})
    lines = [
        "| labelled reviews | " + " | ".join(LABELS[c] for c in cands) + " |",
        "|---" * (len(cands) + 1) + "|",
    ]
    for b in budgets:
        cells = []
        for c in cands:
            mean, spread = stats[c].get(b, {}).get(metric, (None, None))
            cells.append("–" if mean is None else f"{mean:.3f} ± {spread:.3f}")
        lines.append(f"| {_budget_label(b, n_train)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tables(stats: Stats, n_train: int) -> str:
    """Both metrics' tables, each under its name (the markdown artifact and the summary)."""
    return "\n\n".join(f"{METRICS[m]} (mean ± spread over seeds):\n\n{table(stats, n_train, m)}" for m in METRICS)


def worth(stats: Stats) -> tuple[float, int, int | None] | None:
    """(x, full, reached): x is the from-scratch tagger's mean F1 with the most labels (`full`: all of them where
    `all` is a budget), `reached` the smallest budget at which the pretrained tagger's mean reaches x (None:
    never). None without both taggers."""
    pre, scratch = stats.get("pretrained"), stats.get("scratch")
    if not pre or not scratch:
        return None
    full = max(scratch)
    x = scratch[full]["phrase_f1"][0]
    reached = [b for b, ms in sorted(pre.items()) if ms["phrase_f1"][0] >= x]
    return x, full, (reached[0] if reached else None)


def sentence(stats: Stats, n_train: int, unlabelled_lines: int | None = None) -> str:
    """The sentence "pretraining on N unlabelled lines is worth ~k× the labels at F1 x", k = full / reached
    (`worth`); said plainly when the pretrained tagger never reaches x; empty without both taggers."""
    found = worth(stats)
    if found is None:
        return ""
    x, full, reached = found
    what = f"pretraining on {unlabelled_lines:,} unlabelled lines" if unlabelled_lines else "pretraining"
    labels = f"all {full:,} labels" if full == n_train else f"{full:,} labels"
    if len(stats["pretrained"]) == 1:  # one budget: a comparison, not yet a curve
        mine = stats["pretrained"][full]["phrase_f1"][0]
        return (
            f"with {labels}, {what} takes the tagger's F1 from {x:.3f} (from scratch) to {mine:.3f}; add smaller "
            "curve.label_budgets to see how many labels it saves"
        )
    if reached is None:
        best = max(ms["phrase_f1"][0] for ms in stats["pretrained"].values())
        return (
            f"{what} is not worth the labels at F1 {x:.3f}: the pretrained tagger never reaches the from-scratch "
            f"tagger's F1 with {labels} (its best mean: {best:.3f})"
        )
    return (
        f"{what} is worth ~{full / reached:.2g}× the labels at F1 {x:.3f}: the pretrained tagger reaches with "
        f"{reached:,} labelled reviews the from-scratch tagger's F1 with {labels}"
    )


def figure(stats: Stats, n_train: int) -> Any:
    """Two panels against labelled reviews (log x): test phrase F1 and the false-positive rate on negatives, one
    line per candidate (its mean), shaded ± spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    budgets = sorted({b for by in stats.values() for b in by})
    for ax, (m, title) in zip(axes, METRICS.items(), strict=True):
        for cand in (c for c in LABELS if c in stats):
            xs = [b for b in sorted(stats[cand]) if m in stats[cand][b]]
            mean = [stats[cand][b][m][0] for b in xs]
            spread = [stats[cand][b][m][1] for b in xs]
            (line,) = ax.plot(xs, mean, marker="o", label=LABELS[cand])
            low = [a - s for a, s in zip(mean, spread, strict=True)]
            high = [a + s for a, s in zip(mean, spread, strict=True)]
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2)
        ax.set_xscale("log")
        ax.set_xticks(budgets, [_budget_label(b, n_train) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("labelled training reviews")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    found = worth(stats)
    if found is not None:  # the level the sentence reads the pretrained curve at
        axes[0].axhline(found[0], color="gray", linestyle=":", label="from scratch with the most labels")
    axes[0].legend()
    fig.tight_layout()
    return fig
