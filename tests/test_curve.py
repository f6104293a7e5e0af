"""`curve`: the label-efficiency curve (issue 29) on a tiny config: 2 budgets x 2 seeds x 3 candidates.

Nested, deterministic subsets shared by the three candidates; each point a tagged child run of the curve's run;
a rerun trains nothing, a new budget trains only its points; the curve's run holds the metrics (step = budget),
the PNG and the table; `all` is the whole split; a budget larger than the split is one line before any run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from albert_exp import curve, curve_report
from albert_exp.config import load_config
from tests.conftest import stage_runner, tracking_in
from tests.test_tune import TINY, make_data

ROWS = 120  # labelled training reviews of the tiny split
FAST = [
    *TINY,
    "jobs=1",  # one point at a time (the parallel test below runs two)
    "finetune.epochs=1",
    "finetune.augment_mentions=0",
    "baseline.c1=[0.0]",
    "baseline.c2=[0.01]",
    "baseline.max_iterations=30",
    "curve.seeds=2",
]


def _cfg(root: Path, *extra: str):
    return load_config(None, [f"workdir={root}", *FAST, *extra])


def _pretrained(root: Path) -> None:
    """A complete `pretrain` output as far as the curve asks: a (random) tiny ALBERT the vocabulary fits."""
    from albert_exp.hf_local import load_tokenizer
    from albert_exp.modeling import build

    tokenizer = load_tokenizer(root / "vocab" / "tokenizer")
    model = build("pretraining", arch=_cfg(root).model, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    model_dir = root / "pretrained_model"
    model.save_pretrained(model_dir)
    _point_at(root, model_dir)


def _point_at(root: Path, model_dir: Path) -> None:
    (root / "pretrain").mkdir(exist_ok=True)
    (root / "pretrain" / "results.json").write_text(
        json.dumps({"stage": "pretrain", "run_id": None, "key": "test-data", "model_dir": str(model_dir)})
    )
    vocab = root / "vocab" / "results.json"  # fine-tuning reads the vocabulary the pretrained weights know
    vocab.write_text(json.dumps({**json.loads(vocab.read_text()), "tokenizer_dir": str(root / "vocab" / "tokenizer")}))


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """The curve computed once in a fresh store: (root, tracking uri, its results)."""
    root = make_data(tmp_path_factory.mktemp("curve"), rows=ROWS)
    _pretrained(root)
    with tracking_in(root) as uri:
        results = stage_runner("curve")(_cfg(root, "curve.label_budgets=[40,all]"))
        yield root, uri, results


def _runs(uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)


def _rows(path: Path) -> list[tuple[str, ...]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [tuple(r) for r in csv.reader(fh)][1:]


def test_subsets_are_nested_deterministic_and_all_is_the_whole_split(first):
    root, _, results = first
    whole = _rows(root / "corpus" / "train.csv")
    assert results["train_rows"] == ROWS == len(whole) and results["budgets"] == [40, ROWS]  # `all`: every row
    for s in range(2):
        small, full = (_rows(root / "curve" / f"n{b}-seed{s}" / "train.csv") for b in (40, ROWS))
        assert len(small) == 40 and set(small) <= set(full) and sorted(full) == sorted(whole)
    assert _rows(root / "curve" / "n40-seed0" / "train.csv") != _rows(root / "curve" / "n40-seed1" / "train.csv")
    # a plan made again writes the same rows, and leaves the files as they are
    cfg = _cfg(root, "curve.label_budgets=[40,80,all]")
    header, rows = curve.read_rows(root / "corpus" / "train.csv")
    small = root / "curve" / "n40-seed0" / "train.csv"
    before = (small.read_bytes(), small.stat().st_mtime_ns)
    curve.plan(cfg, header, rows, [40, 80, ROWS])
    assert (small.read_bytes(), small.stat().st_mtime_ns) == before
    middle = _rows(root / "curve" / "n80-seed0" / "train.csv")  # a new budget nests between the others
    assert set(_rows(small)) <= set(middle) <= set(_rows(root / "curve" / f"n{ROWS}-seed0" / "train.csv"))


def test_each_point_is_a_tagged_named_child_run_and_the_three_candidates_see_the_same_rows(first):
    _, uri, results = first
    runs = _runs(uri)
    points = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == results["run_id"]]
    assert len(points) == 2 * 2 * 3
    train = {}
    for r in points:
        t = r.data.tags
        budget, seed, cand = t["curve_budget"], t["curve_seed"], t["curve_candidate"]
        assert r.info.run_name == f"curve {budget} seed {seed} {cand}" and r.info.status == "FINISHED"
        assert t["stage"] == {"pretrained": "finetune", "scratch": "scratch", "crf": "baseline"}[cand]
        (digest,) = [d.dataset.digest for d in r.inputs.dataset_inputs if d.dataset.name == "train"]
        train.setdefault((budget, seed), set()).add(digest)
    assert all(len(d) == 1 for d in train.values()), "the candidates of a point trained on different rows"
    # the two 40-row subsets differ; `all` is the same rows (in file order) whatever the seed
    assert len({next(iter(d)) for d in train.values()}) == 3
    seeds = {r.data.params["seed"] for r in points if r.data.tags["curve_candidate"] == "pretrained"}
    assert seeds == {"42", "43"}  # the fine-tuning seed varies with the subset's seed


def test_the_curve_run_holds_the_metrics_by_budget_the_png_the_table_and_the_sentence(first):
    from mlflow import MlflowClient

    _, uri, results = first
    client = MlflowClient(uri)
    for cand in ("pretrained", "scratch", "crf"):
        for m in ("phrase_f1_mean", "phrase_f1_spread", "negative_fp_rate_mean"):
            history = client.get_metric_history(results["run_id"], f"curve/{cand}/{m}")
            assert sorted(p.step for p in history) == [40, ROWS], (cand, m)
    artifacts = {a.path for a in client.list_artifacts(results["run_id"], "curve")}
    assert {"curve/curve.png", "curve/table.md"} <= artifacts
    table = Path(client.download_artifacts(results["run_id"], "curve/table.md")).read_text()
    assert f"| {ROWS:,} (all) |" in table and "ALBERT from scratch" in table and " ± " in table
    assert results["sentence"].startswith("pretraining") and results["sentence"] in table
    assert results["table"] in table and len(results["points"]) == 12


def test_a_rerun_reuses_every_point_and_opens_no_run(first, capsys):
    root, uri, _ = first
    before = len(_runs(uri))
    again = stage_runner("curve")(_cfg(root, "curve.label_budgets=[40,all]"))
    assert len(_runs(uri)) == before and "curve: reusing run" in capsys.readouterr().out
    assert again["reused_run_id"] == first[2]["run_id"]


def test_adding_a_budget_computes_only_that_budgets_points(first):
    root, uri, results = first
    before = {r.info.run_id for r in _runs(uri)}
    bigger = stage_runner("curve")(_cfg(root, "curve.label_budgets=[40,80,all]"))
    new = [r for r in _runs(uri) if r.info.run_id not in before]
    assert sorted(r.data.tags.get("curve_budget", "curve") for r in new) == ["80"] * 6 + ["curve"]
    old = {(p["budget"], p["seed"], p["candidate"]): p["run_id"] for p in results["points"]}
    for p in bigger["points"]:
        assert p["reused"] == (p["budget"] != 80)
        if p["reused"]:  # the same point: the same run and the same figures
            assert p["run_id"] == old[(p["budget"], p["seed"], p["candidate"])]
    assert [r["budget"] for r in bigger["stats"] if r["candidate"] == "crf"] == [40, 80, ROWS]


def test_main_with_the_curve_prints_and_publishes_its_sentence_and_table(first, capsys):
    from mlflow import MlflowClient

    from albert_exp.cli import main

    root, uri, results = first
    args = [
        "main",
        "--workdir",
        str(root),
        "--set",
        " ".join([*FAST, "stages=[curve]", "curve.label_budgets=[40,all]"]),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "curve: reusing run" in out and results["sentence"] in out and "ALBERT from scratch" in out
    parent = json.loads((root / "results.json").read_text())["parent_run_id"]
    note = MlflowClient(uri).get_run(parent).data.tags["mlflow.note.content"]
    assert results["sentence"] in note and results["table"] in note


def test_a_budget_larger_than_the_split_stops_with_one_line_before_any_run(first, capsys):
    from albert_exp.cli import main

    root, uri, _ = first
    before = len(_runs(uri))
    args = ["curve", "--workdir", str(root), "--set", " ".join([*FAST, "curve.label_budgets=[40,5000]"])]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "5000" in line and f"has {ROWS}" in line and "use budgets up to" in line and "train.csv" in line
    assert len(_runs(uri)) == before


def test_sentence_reads_the_pretrained_curve_at_the_scratch_taggers_full_f1():
    def rows(cand, f1s):
        return [
            {"candidate": cand, "budget": b, "seed": s, "phrase_f1": f + s / 100, "negative_fp_rate": 0.1}
            for b, f in zip((100, 300, 1000, 3000), f1s, strict=True)
            for s in (0, 1)
        ]

    stats = curve_report.aggregate(rows("pretrained", [0.5, 0.7, 0.8, 0.9]) + rows("scratch", [0.3, 0.4, 0.6, 0.7]))
    said = curve_report.sentence(stats, 3000, 48_000)
    assert said.startswith("pretraining on 48,000 unlabelled lines is worth ~10× the labels at F1 0.705")
    assert stats["scratch"][3000]["phrase_f1"] == pytest.approx((0.705, 0.00707), abs=1e-5)
    never = curve_report.aggregate(rows("pretrained", [0.1, 0.2, 0.3, 0.4]) + rows("scratch", [0.3, 0.4, 0.6, 0.7]))
    assert "never reaches" in curve_report.sentence(never, 3000)
    one = curve_report.aggregate([r for r in rows("pretrained", [0.5, 0.7, 0.8, 0.9]) if r["budget"] == 3000])
    one.update(curve_report.aggregate([r for r in rows("scratch", [0.3, 0.4, 0.6, 0.7]) if r["budget"] == 3000]))
    said = curve_report.sentence(one, 3000, 48_000)  # one budget: a comparison, no "~1x the labels"
    assert "from 0.705 (from scratch) to 0.905" in said and "add smaller curve.label_budgets" in said


def test_main_summary_carries_the_curve():
    from albert_exp.summary import markdown, plain

    curve_results = {
        "run_id": "abc",
        "sentence": "pretraining is worth ~3× the labels at F1 0.700",
        "table": "| labelled reviews | ALBERT pretrained |\n|---|---|\n| 100 | 0.500 ± 0.010 |",
        "reference_f1": 0.7,
        "labels_worth": 3.0,
        "points": [{"budget": 100}, {"budget": 300}],
    }
    text = markdown("toy", {"curve": curve_results}, "1")
    assert "**pretraining worth** ~3× the labels at F1 0.700" in text.splitlines()[0]
    assert "pretraining is worth ~3× the labels at F1 0.700" in plain(text) and "0.500 ± 0.010" in plain(text)
    one_budget = {**curve_results, "points": [{"budget": 300}], "labels_worth": 1.0}  # a comparison, not a curve
    assert "pretraining worth" not in markdown("toy", {"curve": one_budget}, "1").splitlines()[0]


@pytest.mark.slow
def test_points_in_worker_processes_give_what_one_process_gives(tmp_path, first):
    import shutil

    root, _, results = first
    other = tmp_path / "parallel"
    for d in ("corpus", "vocab", "pretrained_model"):  # the same data, tokenizer and weights
        shutil.copytree(root / d, other / d, symlinks=True)
    _point_at(other, other / "pretrained_model")
    with tracking_in(other) as uri:
        side = stage_runner("curve")(_cfg(other, "curve.label_budgets=[40,all]", "jobs=2"))
        children = [r for r in _runs(uri) if r.data.tags.get("mlflow.parentRunId") == side["run_id"]]
    assert len(children) == 12 and {r.info.status for r in children} == {"FINISHED"}
    assert sorted(p.name for p in (other / "logs").glob("curve-worker-*.log")) == [
        "curve-worker-0.log",
        "curve-worker-1.log",
    ]
    key = ("budget", "seed", "candidate")
    one = {tuple(p[k] for k in key): p["phrase_f1"] for p in results["points"]}
    two = {tuple(p[k] for k in key): p["phrase_f1"] for p in side["points"]}
    assert two == pytest.approx(one)
