"""Fine-tuning stage: AlbertForTokenClassification (2 labels) tags the tokens of the wanted phrase.

    albert-exp finetune --config experiments/toy.yaml --epochs 4

A plain PyTorch loop rather than HF Trainer: the recipe's loss (mean cross-entropy over all real tokens of all
samples in a batch) and per-epoch validation map onto a few lines, the Optuna objective gets a per-epoch hook
for pruning, and the loop logs to MLflow itself (HF's MLflowCallback breaks run nesting under a search).

Starts from an HF ALBERT directory (`model_dir`, e.g. a pretraining checkpoint) or a fresh model from the
`model:` section. AdamW with weight-decay groups (no decay on biases and LayerNorm), linear schedule with
warm-up, gradient clipping, seeded. After every epoch the state is checkpointed (model, optimiser, scheduler,
RNG, epoch); a rerun of the same config on the same data and code resumes from it. The best epoch (by
`select_metric` on val) is evaluated on test and logged twice: as an HF model and as a phrase-extractor pyfunc.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from albert_exp.config import ExperimentConfig, to_dict
from albert_exp.errors import UserError
from albert_exp.hf_local import check_model_dir, load_model, load_tokenizer
from albert_exp.identity import settings
from albert_exp.labels import IGNORE
from albert_exp.stage import Context, Stage, StageResult
from albert_exp.tracking import SkipLogged, Tracker

EpochHook = Callable[[int, dict[str, float]], None]  # (epoch, val metrics); may raise to stop (Optuna pruning)


def data_paths(cfg: ExperimentConfig) -> dict[str, Path]:
    """The tokenizer and the labelled CSVs fine-tuning reads (config paths, else the upstream stages' outputs)."""
    f, corpus = cfg.finetune, cfg.stage_dir("corpus")
    return {
        "tokenizer": Path(f.tokenizer_dir or f.model_dir or cfg.stage_dir("vocab") / "tokenizer"),
        "train": Path(f.train_csv or corpus / "train.csv"),
        "val": Path(f.val_csv or corpus / "val.csv"),
        "test": Path(f.test_csv or corpus / "test.csv"),
    }


def build_model(cfg: ExperimentConfig, tokenizer: Any, model_dir: str | Path | None = None) -> Any:
    """The tagger: the weights of `model_dir` (a checkpoint) or finetune.model_dir, else a fresh model."""
    from albert_exp.modeling import TAG_LABELS, build

    # the same classifier dropout whatever the start: a pretraining checkpoint's config carries 0 (the pretraining
    # heads have none), and the comparison with a fresh model must differ only in the initial weights
    dropout = {"classifier_dropout_prob": cfg.finetune.classifier_dropout}
    if model_dir or cfg.finetune.model_dir:
        return build("token_classification", model_dir=model_dir or cfg.finetune.model_dir, **dropout, **TAG_LABELS)
    return build(
        "token_classification",
        arch=cfg.model,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        **dropout,
        **TAG_LABELS,
    )


def make_optimizer(model: Any, cfg: ExperimentConfig, total_steps: int) -> tuple[Any, Any]:
    import torch
    from transformers import get_linear_schedule_with_warmup

    f = cfg.finetune
    if not f.train_encoder:  # head only: the encoder stays as pretrained
        for p in model.albert.parameters():
            p.requires_grad_(False)
    if f.freeze_embeddings:  # the word embeddings stay as pretrained: names are read through what pretraining knew
        model.albert.embeddings.word_embeddings.weight.requires_grad_(False)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": f.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=f.learning_rate,
    )
    sched = get_linear_schedule_with_warmup(opt, int(f.warmup_ratio * total_steps), total_steps)
    return opt, sched


def evaluate(model: Any, data: Any, batch_size: int, pad_id: int) -> tuple[dict[str, float], list]:
    """Mean token loss and the metrics over whole texts (albert_exp.windows.evaluate), and the predicted spans."""
    from albert_exp.windows import evaluate as evaluate_windows

    return evaluate_windows(model, data, batch_size, pad_id)


def _resume(out: Path, key: str, model: Any, opt: Any, sched: Any) -> tuple[Any, dict | None]:
    """The model and loop state of the last epoch checkpoint written under `key` (None: start afresh)."""
    import shutil

    from albert_exp import checkpoint

    point = checkpoint.resume_point(out, key)
    if point is None:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # another identity's: never resumed
        return model, None
    ckpt, state = point
    model.load_state_dict(load_model(type(model), ckpt, use_safetensors=True).state_dict(), strict=True)
    checkpoint.restore(ckpt, opt, sched)
    checkpoint.ensure_best(out, state["best"]["epoch"] or None, BEST)
    print(f"resuming fine-tuning after epoch {state['step']} from {ckpt}")
    return model, state


BEST = "best_model"


def train(
    cfg: ExperimentConfig,
    tokenizer: Any,
    train_data: Any,
    val_data: Any,
    out: Path,
    tracker: Tracker,
    on_epoch: EpochHook | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """Train with a checkpoint per epoch (albert_exp/checkpoint.py); resumes the last one written under `key`
    (default: this config, the data digests and the code version)."""
    import torch
    from tqdm import tqdm

    from albert_exp import checkpoint
    from albert_exp.digest import stage_key
    from albert_exp.windows import collate

    f = cfg.finetune
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if f.torch_threads:
        torch.set_num_threads(f.torch_threads)
    model = build_model(cfg, tokenizer)
    steps_per_epoch = math.ceil(len(train_data) / f.batch_size)
    opt, sched = make_optimizer(model, cfg, steps_per_epoch * f.epochs)
    pad = tokenizer.pad_token_id
    key = key or stage_key("finetune", {"config": to_dict(cfg)}, {"train": train_data.digest, "val": val_data.digest})
    model, state = _resume(out, key, model, opt, sched)
    history: list[dict[str, float]] = state["history"] if state else []
    best = state["best"] if state else {"epoch": 0, "value": -math.inf}
    start_epoch = state["step"] + 1 if state else 1
    params = sum(p.numel() for p in model.parameters())
    tracker.log_params(
        {
            "derived.parameters": params,
            "derived.trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "derived.steps_per_epoch": steps_per_epoch,
            "derived.train_rows": len(train_data),
        }
    )
    for epoch in range(start_epoch, f.epochs + 1):
        model.train()
        order = torch.randperm(len(train_data), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        loss_sum = tokens = 0.0
        bar = tqdm(
            range(0, len(order), f.batch_size),
            desc=f"epoch {epoch}/{f.epochs}",
            unit="batch",
            disable=None,
            leave=False,
        )
        for b, i in enumerate(bar):
            idx = order[i : i + f.batch_size].tolist()
            batch = collate([train_data.input_ids[k] for k in idx], [train_data.labels[k] for k in idx], pad)
            # the model's loss: mean cross-entropy over the real tokens of all samples in the batch
            loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), f.max_grad_norm)
            opt.step()
            sched.step()
            n = int((batch["labels"] != IGNORE).sum())
            loss_sum += loss.item() * n
            tokens += n
            bar.set_postfix(loss=f"{loss_sum / tokens:.4f}")
            # every metric of the run is at the optimizer step (updates done); the last batch's step is the epoch's
            if b % 20 == 0 and b < steps_per_epoch - 1:
                tracker.log_metrics(
                    {"finetune/batch_loss": loss.item(), "finetune/lr": sched.get_last_lr()[0]},
                    step=(epoch - 1) * steps_per_epoch + b + 1,
                )
        val, _ = evaluate(model, val_data, f.eval_batch_size, pad)
        row = {"finetune/train_loss": loss_sum / max(tokens, 1), **{f"val/{k}": v for k, v in val.items()}}
        tracker.log_metrics({**row, "epoch": epoch}, step=epoch * steps_per_epoch)
        history.append({"epoch": epoch, **row})
        print(f"epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in row.items()))
        value = val[f.select_metric]
        improved = value > best["value"]
        if improved:
            best = {"epoch": epoch, "value": value}
        state = {"key": key, "history": history, "best": best, "mlflow_run_id": tracker.run_id}
        ckpt = checkpoint.save(out, epoch, model, opt, sched, state, extra_files=tokenizer.save_pretrained)
        if improved:
            checkpoint.update_best(out, ckpt, BEST)
        checkpoint.prune(out, 1, best["epoch"])
        if on_epoch is not None:
            on_epoch(epoch, val)
    return {
        "history": history,
        "best_epoch": best["epoch"],
        "best_step": best["epoch"] * steps_per_epoch,
        "best_value": best["value"],
        "parameters": params,
    }


def prepare(ctx: Context) -> Any:
    """The three splits, encoded and checked before the run opens (a bad CSV or tokenizer is one line)."""
    from albert_exp.data import encode_splits

    cfg = ctx.cfg
    f = cfg.finetune
    if f.model_dir:  # before its files are digested for the stage's identity: the error names the setting
        check_model_dir(f.model_dir, where="finetune.model_dir")
    paths = data_paths(cfg)
    if not (paths["tokenizer"] / "tokenizer_config.json").is_file():
        raise UserError(
            "no tokenizer found",
            where=str(paths["tokenizer"]),
            fix="run `albert-exp vocab` first, or set finetune.tokenizer_dir / finetune.model_dir",
        )
    tokenizer = load_tokenizer(paths["tokenizer"])
    return tokenizer, encode_splits(paths, tokenizer, f)


def compute(ctx: Context) -> dict[str, Any]:
    """Train with a checkpoint per epoch (a rerun of the same identity resumes the last one, in the same run),
    score the best epoch on test, log the models."""
    import pandas as pd

    cfg, out, run_tracker = ctx.cfg, ctx.work, ctx.tracker
    f = cfg.finetune
    paths = data_paths(cfg)
    tokenizer, data = ctx.prepared
    tracker = SkipLogged(run_tracker)  # the steps a killed run logged after its last checkpoint: once
    digest = hashlib.sha256("".join(d.digest for d in data.values()).encode()).hexdigest()
    # one digest per dataset: the sha256 of its file (text and labels), the same in the dataset inputs (its
    # first 12 characters: MLflow's limit is 36), these tags, promote's eval_digest and the registry
    tracker.set_tags({"dataset_digest": digest, **{f"data.{s}_sha256": d.digest for s, d in data.items()}})
    for split, d in data.items():
        tracker.log_input(
            pd.read_csv(paths[split], dtype=str, keep_default_na=False),  # text and labels, as in the file
            name=f"{split}.csv",
            source=str(paths[split]),
            context={"train": "training", "val": "validation", "test": "testing"}[split],
            digest=d.digest[:12],
            targets=f.phrase_column,
        )
        if d.dropped:
            print(
                f"{paths[split]}: dropped {len(d.dropped)} rows whose phrase is not in the text, e.g. "
                f"row {d.dropped[0]['row']}: {d.dropped[0]['missing']}"
            )
            tracker.log_dict({"dropped": d.dropped}, f"data/{split}_dropped_rows.json")
        tracker.log_params(
            {
                f"data.{split}_rows": len(d.texts),
                f"data.{split}_dropped_rows": len(d.dropped),
                f"data.{split}_windows": len(d),  # rows longer than one window are cut into several
                f"data.{split}_windowed_rows": d.windowed_rows,
            }
        )
    on_epoch = ctx.hooks.get("on_epoch")
    trained = train(cfg, tokenizer, data["train"], data["val"], out, tracker, on_epoch, key=ctx.key)
    best_dir = out / BEST
    model = build_model(cfg, tokenizer, best_dir)
    test, _ = evaluate(model, data["test"], f.eval_batch_size, tokenizer.pad_token_id)
    # at the best epoch's step: the logged models carry that step's metrics (val, test, epoch)
    tracker.log_metrics({f"test/{k}": v for k, v in test.items()}, step=trained["best_step"])
    tracker.log_dict({"history": trained["history"]}, "history.json")
    results = {
        "model_dir": str(ctx.done / BEST),
        "best_epoch": trained["best_epoch"],
        f"val/{f.select_metric}": trained["best_value"],
        # the validation figures of every epoch: a search trial with this identity is this run (albert_exp/tune.py)
        "val_history": [
            {k: v for k, v in h.items() if k == "epoch" or k.startswith("val/")} for h in trained["history"]
        ],
        **{f"test/{k}": v for k, v in test.items()},
        "dataset_digest": digest,
    }
    if tracker.run_id and ctx.hooks.get("log_models", True):
        _log_models(tracker, best_dir, data["val"].texts[:3], f, trained["best_step"])
        results["model_uri"] = f"runs:/{tracker.run_id}/phrase_extractor"
        results["hf_model_uri"] = f"runs:/{tracker.run_id}/hf_model"
    return results


def pinned(cfg: ExperimentConfig, workdir: Path) -> ExperimentConfig:
    """`cfg` with its own workdir (its own checkpoints) and the data and tokenizer it reads now, as absolute
    paths, so that the new workdir does not move them (a search trial, the from-scratch control)."""
    p = data_paths(cfg)
    f = dataclasses.replace(
        cfg.finetune,
        tokenizer_dir=str(p["tokenizer"].resolve()),
        train_csv=str(p["train"].resolve()),
        val_csv=str(p["val"].resolve()),
        test_csv=str(p["test"].resolve()),
    )
    return dataclasses.replace(cfg, workdir=str(workdir), finetune=f)


def inputs(cfg: ExperimentConfig) -> dict[str, Path | list[Path]]:
    """The tokenizer, the three CSVs and the weights it starts from (their contents)."""
    paths: dict[str, Path | list[Path]] = dict(data_paths(cfg))
    if cfg.finetune.model_dir:
        paths["model"] = Path(cfg.finetune.model_dir)
    return paths


def needs(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The corpus (for the CSVs it does not name), the vocabulary (unless a tokenizer is named) and, when the
    experiment pretrains, the pretrained weights (unless finetune.model_dir names others)."""
    f = cfg.finetune
    pretrained = "pretrain" in cfg.stages and not f.model_dir
    return (
        ("corpus",) * (not (f.train_csv and f.val_csv and f.test_csv))
        + ("vocab",) * (not (f.tokenizer_dir or f.model_dir))
        + ("pretrain",) * pretrained
    )


def configure(cfg: ExperimentConfig, upstream: Mapping[str, StageResult]) -> ExperimentConfig:
    """Fine-tuning starts from the pretrained weights, with the vocabulary they know."""
    if "pretrain" not in upstream:
        return cfg
    f = cfg.finetune
    tokenizer = f.tokenizer_dir or (upstream["vocab"]["tokenizer_dir"] if "vocab" in upstream else None)
    return dataclasses.replace(
        cfg,
        finetune=dataclasses.replace(f, model_dir=upstream["pretrain"]["model_dir"], tokenizer_dir=tokenizer),
    )


def key_extra(cfg: ExperimentConfig) -> dict[str, Any]:
    return {} if cfg.finetune.model_dir else {"model": settings(cfg, "model")}  # a fresh model: its architecture


def describe(cfg: ExperimentConfig) -> str:
    f = cfg.finetune
    return f"{'from ' + Path(f.model_dir).name if f.model_dir else 'from scratch'} lr={f.learning_rate:g}"


STAGE = Stage(
    name="finetune",
    section="finetune",
    compute=compute,
    inputs=inputs,
    needs=needs,
    key_extra=key_extra,
    configure=configure,
    prepare=prepare,
    describe=describe,
    resumable=True,
)


def _log_models(tracker: Tracker, best_dir: Path, examples: list[str], f: Any, step: int) -> None:
    """The HF model (artifacts, loadable back with from_pretrained for further training) and the pyfunc, whose
    page in the UI shows the metrics of the best epoch's step (not MLflow's default, step 0)."""
    from albert_exp.serving import log_phrase_extractor

    tracker.log_artifacts(best_dir, "hf_model")
    info = log_phrase_extractor(
        best_dir, examples, f.max_seq_length, window_stride=f.window_stride, aggregation=f.aggregation
    )
    tracker.link_model_metrics(info.model_id, step)
