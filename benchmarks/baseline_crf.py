"""The CRF baseline's regularisation grid: quality of each point and its CPU cost, fitted two ways.

    albert-exp corpus --config experiments/toy_realistic.yaml --workdir /tmp/crf_real
    python benchmarks/baseline_crf.py --config experiments/toy_realistic.yaml --workdir /tmp/crf_real \
        --c1 0 0.05 0.5 --c2 0.001 0.01 0.1

Reads the labelled split as the `baseline` stage does (albert_exp.baseline._splits), then fits every (c1, c2)
point with `crf.train` (features extracted again per point, as the stage's loop does) and with one
`crf.trainer` fitted per point (`crf.fit`), and prints val / test phrase F1 and unseen-word recall per point,
the point val chooses, and the CPU seconds of both ways with their ratio. The two ways give the same models
(tests/test_baseline.py checks the bytes), so only the cost differs.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path


def main() -> None:
    import pycrfsuite

    from albert_exp import crf
    from albert_exp.baseline import _splits, score
    from albert_exp.config import load_config
    from albert_exp.metrics import phrase_words

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="experiments/toy_realistic.yaml")
    ap.add_argument("--workdir", required=True, help="where `albert-exp corpus` wrote the labelled split")
    ap.add_argument("--c1", type=float, nargs="+", default=[0.0, 0.05, 0.5])
    ap.add_argument("--c2", type=float, nargs="+", default=[0.001, 0.01, 0.1])
    ap.add_argument("--max-iterations", type=int, default=100)
    args = ap.parse_args()

    data = _splits(load_config(args.config, [f"workdir={args.workdir}"]))
    texts, gold = data["train"]["texts"], data["train"]["spans"]
    known = phrase_words(data["train"]["phrases"])
    grid = list(itertools.product(args.c1, args.c2))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.process_time()
        for c1, c2 in grid:
            crf.train(texts, gold, str(Path(tmp) / f"{c1}-{c2}"), c1, c2, args.max_iterations)
        per_point = time.process_time() - t0
        t0 = time.process_time()
        trainer = crf.trainer(texts, gold)
        for c1, c2 in grid:
            crf.fit(trainer, str(Path(tmp) / f"{c1}-{c2}"), c1, c2, args.max_iterations)
        shared = time.process_time() - t0
        for c1, c2 in grid:
            tagger = pycrfsuite.Tagger()
            tagger.open(str(Path(tmp) / f"{c1}-{c2}"))
            rows.append((c1, c2, score(tagger, data["val"], known), score(tagger, data["test"], known)))
    print("| c1 | c2 | val phrase F1 | test phrase F1 | test unseen-word recall |\n|---|---|---|---|---|")
    for c1, c2, val, test in rows:
        unseen = test.get("unseen_phrase_recall", float("nan"))
        print(f"| {c1:g} | {c2:g} | {val['phrase_f1']:.4f} | {test['phrase_f1']:.4f} | {unseen:.4f} |")
    c1, c2, val, test = max(rows, key=lambda r: r[2]["phrase_f1"])
    print(f"chosen on val: c1={c1:g} c2={c2:g}, test phrase F1 {test['phrase_f1']:.4f}")
    print(
        f"{len(grid)} points, CPU s: features per point {per_point:.1f}, one trainer {shared:.1f} "
        f"(ratio {per_point / shared:.2f})"
    )


if __name__ == "__main__":
    main()
