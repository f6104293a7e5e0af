"""Classic baseline stage: a linear-chain CRF with word features (albert_exp/crf.py) on the fine-tuning split.

    albert-exp baseline --config experiments/toy.yaml

Trains on the same labelled train CSV as `finetune` (same phrase matching and dropped rows), chooses the L1/L2
regularisation (`baseline.c1` x `baseline.c2`) by phrase F1 on val, scores the chosen model on test with the
same metric function as the ALBERT tagger (albert_exp.metrics.span_metrics, seen/unseen split included), and
logs it as its own run: metrics per candidate (step = candidate index), `val/*` and `test/*` of the chosen one,
`baseline/train_cpu_s`, the exact-match lookup of training names on test (`test/lookup_*`), and the model as a
`phrase_extractor` pyfunc with the ALBERT extractor's input and output, so `predict` and serving take it like
any candidate. What an ALBERT must beat.

Its output (`<workdir>/baseline@<identity>/`, linked from `<workdir>/baseline`) is computed afresh into a work
directory and renamed into place when complete; the identity (albert_exp/identity.py) covers the `baseline:`
section, the labelling settings of `finetune:` and the digests of the three CSVs, so `main` reuses it across
fine-tuning and pretraining changes.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from albert_exp.config import ExperimentConfig
from albert_exp.stage import Context, Stage


def _splits(cfg: ExperimentConfig) -> dict[str, Any]:
    from albert_exp.data import labelled_spans
    from albert_exp.finetune import data_paths

    f, paths = cfg.finetune, data_paths(cfg)
    kw = dict(
        text_column=f.text_column,
        phrase_column=f.phrase_column,
        separator=f.phrase_separator,
        case_insensitive=f.case_insensitive,
        on_missing_phrase=f.on_missing_phrase,
    )
    out = {}
    for split in ("train", "val", "test"):
        kept, dropped, digest = labelled_spans(
            paths[split], max_rows=f.max_train_rows if split == "train" else None, **kw
        )
        out[split] = {
            "texts": [t for _, t, _, _ in kept],
            "spans": [s for _, _, s, _ in kept],
            "phrases": [p for *_, ps in kept for p in ps],
            "dropped": len(dropped),
            "digest": digest,
            "path": str(paths[split]),
        }
    return out


def score(tagger: Any, split: dict[str, Any], train_words: set[str]) -> dict[str, float]:
    from albert_exp.crf import tag
    from albert_exp.metrics import span_metrics

    pred = [[(s["start"], s["end"]) for s in row["spans"]] for row in tag(tagger, split["texts"])]
    return span_metrics(split["texts"], split["spans"], pred, train_words)


def lookup_spans(texts: list[str], train_phrases: list[str]) -> list[list[tuple[int, int]]]:
    """The exact-match lookup baseline: every occurrence (case-insensitive, at word boundaries) of any
    training phrase, overlapping ones merged. It finds seen names only, by construction."""
    from albert_exp.labels import phrase_spans

    known = sorted({p.lower() for p in train_phrases})
    return [phrase_spans(text, [p for p in known if p in text.lower()])[0] for text in texts]


def compute(ctx: Context) -> dict[str, Any]:
    """Every candidate of the grid into the work directory (seconds of CRF training: a killed run starts over)."""
    import pandas as pd
    import pycrfsuite

    from albert_exp import crf
    from albert_exp.metrics import phrase_words, span_metrics
    from albert_exp.serving import log_from_code

    cfg, out, tracker = ctx.cfg, ctx.work, ctx.tracker
    b = cfg.baseline
    data = ctx.prepared
    known = phrase_words(data["train"]["phrases"])
    tracker.set_tags({"model_kind": "crf"})
    for split, d in data.items():
        tracker.log_metrics({f"data/{split}_rows": len(d["texts"]), f"data/{split}_dropped_rows": d["dropped"]}, 0)
    candidates = []
    cpu0 = time.process_time()
    features = crf.trainer(data["train"]["texts"], data["train"]["spans"])  # extracted once for the whole grid
    for i, (c1, c2) in enumerate(itertools.product(b.c1, b.c2)):
        path = out / f"crf-c1_{c1:g}-c2_{c2:g}.crfsuite"
        t0 = time.process_time()
        crf.fit(features, str(path), c1, c2, b.max_iterations)
        seconds = time.process_time() - t0
        tagger = pycrfsuite.Tagger()
        tagger.open(str(path))
        val = score(tagger, data["val"], known)
        tracker.log_metrics({"val/phrase_f1": val["phrase_f1"], "baseline/c1": c1, "baseline/c2": c2}, i)
        candidates.append({"c1": c1, "c2": c2, "path": path, "train_cpu_s": seconds, "val": val})
        print(f"crf c1={c1:g} c2={c2:g}: val phrase F1 {val['phrase_f1']:.4f} ({seconds:.1f} CPU s)")
    best = max(candidates, key=lambda c: c["val"]["phrase_f1"])
    tagger = pycrfsuite.Tagger()
    tagger.open(str(best["path"]))
    test = score(tagger, data["test"], known)
    lookup = span_metrics(
        data["test"]["texts"],
        data["test"]["spans"],
        lookup_spans(data["test"]["texts"], data["train"]["phrases"]),
        known,
    )
    summary = {
        **{f"val/{k}": v for k, v in best["val"].items()},
        **{f"test/{k}": v for k, v in test.items()},
        # the two trivial baselines on the same test split: tag nothing, and look up training names
        "test/all_negative_phrase_f1": 0.0,
        **{
            f"test/lookup_{k}": lookup[k]
            for k in ("phrase_f1", "seen_phrase_recall", "unseen_phrase_recall")
            if k in lookup
        },
        "baseline/train_cpu_s": best["train_cpu_s"],
        "baseline/search_cpu_s": time.process_time() - cpu0,
    }
    tracker.log_metrics(summary, len(candidates))
    tracker.log_params({"chosen.c1": best["c1"], "chosen.c2": best["c2"]})
    grid = [{k: v for k, v in c.items() if k != "path"} for c in candidates]
    tracker.log_dict({"candidates": grid}, "crf_candidates.json")
    results = {
        "model_path": str(ctx.done / best["path"].name),
        "c1": best["c1"],
        "c2": best["c2"],
        **summary,
    }
    if tracker.run_id and ctx.hooks.get("log_models", True):  # a curve point logs no model
        example = pd.DataFrame({"text": data["val"]["texts"][:3]})
        output = pd.DataFrame(crf.tag(tagger, example["text"].tolist()))
        log_from_code(
            "crf_pyfunc_model.py",
            {"crf_model": str(best["path"])},
            {"c1": best["c1"], "c2": best["c2"]},
            example,
            output,
            "phrase_extractor",
            extra_requirements=("python-crfsuite",),
        )
        results["model_uri"] = f"runs:/{tracker.run_id}/phrase_extractor"
    return results


def inputs(cfg: ExperimentConfig) -> dict[str, Path | list[Path]]:
    """The labelled split alone: no tokenizer, no model."""
    from albert_exp.finetune import data_paths

    return {k: v for k, v in data_paths(cfg).items() if k in ("train", "val", "test")}


def _labelling(cfg: ExperimentConfig) -> dict[str, Any]:
    """The `finetune:` settings that decide which spans the labelled split holds: the CRF reads the same split
    through them, and nothing else of fine-tuning (its epochs or learning rate do not change the baseline)."""
    return {"labelling": {k: getattr(cfg.finetune, k) for k in LABELLING}}


LABELLING = (
    "text_column",
    "phrase_column",
    "phrase_separator",
    "case_insensitive",
    "on_missing_phrase",
    "max_train_rows",
)


def summary_rows(results: dict[str, Any]) -> dict[str, float]:
    """The baseline's test figures as the parent run shows them beside ALBERT's."""
    keys = ("phrase_f1", "unseen_phrase_recall", "unseen_phrase_f1", "word_accuracy", "lookup_phrase_f1")
    return {f"baseline/test/{k}": results[f"test/{k}"] for k in keys if f"test/{k}" in results}


STAGE = Stage(
    name="baseline",
    section="baseline",
    compute=compute,
    inputs=inputs,
    needs=lambda cfg: ("corpus",) * (not (cfg.finetune.train_csv and cfg.finetune.val_csv and cfg.finetune.test_csv)),
    key_extra=_labelling,
    prepare=lambda ctx: _splits(ctx.cfg),
    describe=lambda cfg: "crf",
)
