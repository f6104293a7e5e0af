"""`curve` stage: how many labelled reviews pretraining saves, as a curve (issue 29).

    albert-exp curve --config experiments/toy_realistic.yaml          # after a pretraining (`main` made one)
    albert-exp main --config experiments/toy_realistic.yaml \
        --set "stages=[corpus,vocab,pretraining-data,pretrain,curve]"
    albert-exp curve --config experiments/toy.yaml --label-budgets 100,300,all --seeds 2

For each of `curve.seeds` seeds s, one seeded permutation of the rows of the labelled training CSV; the subset of a
budget is its first `budget` rows (written in file order to `<workdir>/curve/n<budget>-seed<s>/train.csv`): the
100-row subset lies inside the 300-row one, a rerun writes the same rows, `all` is the whole split, val and test
are never cut. Each candidate of `curve.candidates` (the pretrained tagger = `finetune`, the same from random
weights = `scratch`, the CRF = `baseline`) trains on that same subset as its own stage, run by the executor with
a config pinned to that directory (finetune.train_csv = the subset, seed = seed + s; the search's trials are made
the same way): a nested run tagged `curve_budget` / `curve_seed` / `curve_candidate`, named `curve 300 seed 1
pretrained`, reused while its identity holds and resumed when killed. So a rerun trains nothing and a new budget
trains only its own points. The points' models are not logged (the curve needs their test figures only).

The curve's own run, the points' parent, shows it as people read it (albert_exp/curve_report.py): metrics
`curve/<candidate>/<metric>_mean|_spread` at step = budget (test phrase F1 and false-positive rate on negative
reviews; spread: the standard deviation over seeds), `curve/curve.png`, `curve/table.md`, and one sentence
("pretraining on N unlabelled lines is worth ~k× the labels at F1 x"), also in results.json, the run's
description and `main`'s summary.

Points run side by side in `jobs` worker processes (0: devices.parallel_slots(finetune.torch_threads): one per
GPU, else the cores / a point's threads), logs in <workdir>/logs/; a point's result depends on its config alone.
"""

from __future__ import annotations

import csv
import io
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from albert_exp import baseline, curve_report, finetune, scratch
from albert_exp.config import ExperimentConfig, with_overrides
from albert_exp.errors import UserError
from albert_exp.identity import key_of, output_of, settings
from albert_exp.stage import Context, Stage, StageResult
from albert_exp.tracking import rename_run, run_tags

# each candidate is the declared stage that trains it
STAGES = {"pretrained": finetune.STAGE, "scratch": scratch.STAGE, "crf": baseline.STAGE}


@dataclass(frozen=True)
class Point:
    """One candidate on one subset: what it trains under (a config pinned to the subset's directory)."""

    budget: int
    seed: int
    candidate: str
    cfg: ExperimentConfig

    @property
    def name(self) -> str:
        return f"curve {self.budget} seed {self.seed} {self.candidate}"

    @property
    def tags(self) -> dict[str, Any]:
        return {"curve_budget": self.budget, "curve_seed": self.seed, "curve_candidate": self.candidate}


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """The header and the data rows of a labelled CSV, as written (blank lines left out)."""
    if not path.is_file():
        raise UserError(
            "file not found", where=str(path), fix="run `albert-exp corpus` first, or set finetune.train_csv"
        )
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = [r for r in csv.reader(fh) if r]
    return (rows[0] if rows else []), rows[1:]


def budgets(cfg: ExperimentConfig, n_rows: int, train_csv: Path) -> list[int]:
    """curve.label_budgets as numbers of rows (`all`: every row), smallest first; one too large stops here."""
    too_big = [b for b in cfg.curve.label_budgets if b != "all" and b > n_rows]
    if too_big:
        raise UserError(
            f"curve.label_budgets asks for {too_big[0]} labelled reviews, but the training split {train_csv} has "
            f"{n_rows}",
            where=cfg.source if not cfg.source.startswith("<") else "curve.label_budgets",
            fix=f"use budgets up to {n_rows}, or `all` for the whole split",
        )
    return sorted({n_rows if b == "all" else b for b in cfg.curve.label_budgets})


def permutation(n_rows: int, cfg: ExperimentConfig, index: int) -> list[int]:
    """Seed `index`'s order of the rows: its subsets are prefixes of it, hence nested and the same on every run."""
    order = list(range(n_rows))
    random.Random(f"curve/{cfg.seed}/{index}").shuffle(order)
    return order


def write_subset(path: Path, header: list[str], rows: list[list[str]], chosen: list[int]) -> Path:
    """The chosen rows in file order; the file is written only when its bytes change (a rerun leaves it)."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows[i] for i in sorted(chosen))
    data = buf.getvalue().encode("utf-8")
    if not (path.is_file() and path.read_bytes() == data):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path.resolve()


def point_config(cfg: ExperimentConfig, workdir: Path, train_csv: Path, index: int) -> ExperimentConfig:
    """`cfg` pinned to `workdir` (the data, tokenizer and weights it reads now), training on `train_csv`, with the
    seed of seed index `index` (fine-tuning's initial head, dropout and batch order)."""
    pinned = finetune.pinned(cfg, workdir)
    return with_overrides(pinned, {"finetune.train_csv": str(train_csv), "seed": cfg.seed + index})


def plan(cfg: ExperimentConfig, header: list[str], rows: list[list[str]], sizes: list[int]) -> list[Point]:
    """Every point, the subsets written; largest budgets first (the longest trainings start first in parallel)."""
    points = []
    for s in range(cfg.curve.seeds):
        order = permutation(len(rows), cfg, s)
        for b in sorted(sizes, reverse=True):
            workdir = cfg.stage_dir("curve") / f"n{b}-seed{s}"
            subset = write_subset(workdir / "train.csv", header, rows, order[:b])
            pcfg = point_config(cfg, workdir.resolve(), subset, s)
            points += [Point(b, s, c, pcfg) for c in cfg.curve.candidates]
    return sorted(points, key=lambda p: -p.budget)


def run_point(point: Point, run: Any) -> StageResult:
    """One point through the executor (`run`: its run_stage for nested stages), tagged and named."""
    with run_tags(point.tags):
        result = run(STAGES[point.candidate].name, point.cfg, {"log_models": False})
    if result.run_id and not result.reused:
        rename_run(result.run_id, point.name)
    return result


def _complete(point: Point) -> bool:
    """Whether the point's output is complete already (the executor will reuse it: no worker needed)."""
    stage = STAGES[point.candidate]
    return output_of(stage, stage.configure(point.cfg, {})).complete() is not None


def run_points(points: list[Point], ctx: Context) -> list[StageResult]:
    """Every point's result, in `points` order: complete ones here (reused), the others in worker processes when
    more than one would run, else here one after another."""
    out: dict[int, StageResult] = {}
    todo = {i: p for i, p in enumerate(points) if not _complete(p)}
    from albert_exp.tune import trial_workers  # a point is a fine-tuning, as a trial is: the same count

    n = min(trial_workers(ctx.cfg), len(todo))
    for i, p in enumerate(points):
        if n <= 1 or i not in todo:
            out[i] = run_point(p, ctx.run)
    if n > 1:
        out.update(_in_pool(todo, n, ctx))
    return [out[i] for i in range(len(points))]


def _in_pool(points: dict[int, Point], n: int, ctx: Context) -> dict[int, StageResult]:
    """The points in `n` worker processes (albert_exp/pool.py), their runs nested under the curve's."""
    from albert_exp.pool import in_pool

    logs = ctx.cfg.root / "logs"
    print(f"curve: {len(points)} points in {n} worker processes (logs: {logs}/curve-worker-*.log)", flush=True)

    def say(i: int, result: StageResult) -> None:
        print(f"{points[i].name}: test phrase F1 {result.get('test/phrase_f1', float('nan')):.4f}", flush=True)

    tasks = {i: (p, ctx.run) for i, p in points.items()}
    return in_pool(run_point, tasks, n, logs=logs, prefix="curve", parent_run_id=ctx.run_id, on_result=say)


def prepare(ctx: Context) -> Any:
    """The training split read and the budgets checked before the run opens (a budget larger than the split is
    one line); the starting weights checked where the pretrained tagger is a candidate."""
    from albert_exp.hf_local import check_model_dir

    cfg = ctx.cfg
    if "pretrained" in cfg.curve.candidates:
        if not cfg.finetune.model_dir:
            raise UserError(
                "the curve's pretrained tagger has no pretrained weights",
                where=cfg.source,
                fix="run `albert-exp pretrain` first (or set finetune.model_dir), or leave `pretrained` out of "
                "curve.candidates",
            )
        check_model_dir(cfg.finetune.model_dir, where="finetune.model_dir")
    train_csv = finetune.data_paths(cfg)["train"]
    header, rows = read_rows(train_csv)
    return header, rows, budgets(cfg, len(rows), train_csv)


def compute(ctx: Context) -> dict[str, Any]:
    cfg, tracker = ctx.cfg, ctx.tracker
    header, rows, sizes = ctx.prepared
    points = plan(cfg, header, rows, sizes)
    results = run_points(points, ctx)
    measured = [
        {
            "budget": p.budget,
            "seed": p.seed,
            "candidate": p.candidate,
            "run_id": r.run_id,
            "reused": r.reused,
            **{m: r.get(f"test/{m}") for m in curve_report.METRICS},
        }
        for p, r in zip(points, results, strict=True)
    ]
    stats = curve_report.aggregate(measured)
    corpus = ctx.upstream.get("corpus")
    lines = corpus.get("lines") if corpus is not None else None
    said = curve_report.sentence(stats, len(rows), lines)
    x, full, reached = curve_report.worth(stats) or (None, None, None)
    table = curve_report.tables(stats, len(rows))
    _log_curve(tracker, stats, len(rows), said, table)
    if reached:
        tracker.log_metrics({"curve/labels_worth": full / reached, "curve/scratch_full_f1": x}, step=0)
    print(f"\n{said}\n\n{table}" if said else f"\n{table}", flush=True)
    return {
        "train_rows": len(rows),
        "budgets": sizes,
        "seeds": cfg.curve.seeds,
        "candidates": list(cfg.curve.candidates),
        "unlabelled_lines": lines,
        "sentence": said,
        "reference_f1": x,  # the from-scratch tagger's mean F1 with the most labels
        "labels_worth": full / reached if reached else None,  # the k of the sentence
        "table": table,
        "stats": curve_report.as_rows(stats),
        "points": measured,
    }


def _log_curve(tracker: Any, stats: curve_report.Stats, n_train: int, said: str, table: str) -> None:
    """On the curve's run: the metrics at step = budget (the UI's charts are the curve), the PNG, the table, and
    the sentence and table as its description."""
    import matplotlib.pyplot as plt

    for cand, by_budget in stats.items():
        for budget, ms in by_budget.items():
            values = {
                f"curve/{cand}/{m}_{k}": v
                for m, pair in ms.items()
                for k, v in zip(("mean", "spread"), pair, strict=True)
            }
            tracker.log_metrics(values, step=budget)
    fig = curve_report.figure(stats, n_train)
    tracker.log_figure(fig, "curve/curve.png")
    plt.close(fig)
    tracker.log_text(f"{said}\n\n{table}\n" if said else f"{table}\n", "curve/table.md")
    tracker.set_tags({"mlflow.note.content": f"**{said}**\n\n{table}" if said else table})


def needs(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The data fine-tuning reads and, for the pretrained tagger, the pretrained weights (unless named)."""
    f = cfg.finetune
    pretrained = "pretrained" in cfg.curve.candidates and not f.model_dir
    return tuple(n for n in finetune.needs(cfg) if n != "pretrain") + ("pretrain",) * pretrained


def key_extra(cfg: ExperimentConfig) -> dict[str, Any]:
    """What every point depends on besides the curve's own settings and the inputs: the fine-tuning and CRF
    settings, the architecture of the from-scratch model, the precision."""
    return {
        "finetune": settings(cfg, "finetune"),
        "baseline": settings(cfg, "baseline"),
        "model": settings(cfg, "model"),
        **finetune.key_extra(cfg),
    }


def describe(cfg: ExperimentConfig) -> str:
    c = cfg.curve
    return f"{','.join(map(str, c.label_budgets))} x {c.seeds} seeds"


STAGE = Stage(
    name="curve",
    section="curve",
    compute=compute,
    inputs=finetune.inputs,
    needs=needs,
    uses=lambda cfg: ("corpus",),  # its line count, for the sentence
    key_extra=key_extra,
    configure=finetune.configure,
    prepare=prepare,
    describe=describe,
    has_output=False,  # its run is the result; the points are outputs of their own stages under <workdir>/curve/
    key=lambda cfg, upstream: key_of(STAGE, cfg),
)
