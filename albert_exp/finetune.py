"""Fine-tuning stage: AlbertForTokenClassification (2 labels) tags the tokens of the wanted phrase.

    albert-exp finetune --config experiments/toy.yaml --epochs 4
    torchrun --nproc-per-node 2 -m albert_exp finetune --config experiments/toy.yaml   # 2 GPUs (NCCL) or 2 CPU procs

On the device of `finetune.device` (auto: CUDA when present) in `finetune.precision` (auto: bf16 where the card has
it, fp16 with a gradient scaler where not, fp32 on the CPU; albert_exp/devices.py). Under torchrun every rank
trains its share of each global batch (`batch_size` is the global batch: world x gradient_accumulation_steps
parts, Steps) through DDP (albert_exp/pretrain/ddp.py); each part's loss is normalised by the global batch's
real tokens (token_loss) and its dropout seeded per part, so N ranks compute what one process with N-fold
accumulation computes (tests/test_finetune_ddp.py: bit for bit at 2 ranks). Rank 0 alone evaluates,
checkpoints and logs.

A plain PyTorch loop rather than HF Trainer: the recipe's loss (mean cross-entropy over all real tokens of all
samples in a batch) and per-epoch validation map onto a few lines, the Optuna objective gets a per-epoch hook
for pruning, and the loop logs to MLflow itself (HF's MLflowCallback breaks run nesting under a search).

Starts from an HF ALBERT directory (`model_dir`, e.g. a pretraining checkpoint) or a fresh model from the
`model:` section. AdamW with weight-decay groups (no decay on biases and LayerNorm), linear schedule with
warm-up, gradient clipping, seeded. Training length: `epochs`, or as many as `min_steps` optimiser steps take
on a small training split (300 reviews and their 3 mention copies: 28 steps an epoch), val then evaluated about
`epochs` times. After every evaluated epoch the state is checkpointed (model, optimiser, scheduler, RNG, epoch);
a rerun of the same config on the same data and code resumes from it. The best epoch (by `select_metric` on
val) is evaluated on test and logged twice: as an HF model and as a phrase-extractor pyfunc.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from albert_exp.config import ExperimentConfig, to_dict, with_overrides
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
    # the word embeddings stay as pretrained: names are read through what pretraining knew (random ones are trained)
    if f.freeze_embeddings and f.model_dir:
        model.albert.embeddings.word_embeddings.weight.requires_grad_(False)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": f.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=f.learning_rate,
        fused=True,  # one kernel for all parameters (CPU and CUDA), as HF Trainer's default: ~7% of a toy step
    )
    sched = get_linear_schedule_with_warmup(opt, int(f.warmup_ratio * total_steps), total_steps)
    return opt, sched


def evaluate(
    model: Any, data: Any, batch_size: int, pad_id: int, device: Any = "auto", precision: str | None = None
) -> tuple[dict[str, float], list]:
    """Mean token loss and the metrics over whole texts (albert_exp.windows.evaluate), and the predicted spans.
    `device`: a torch.device or a choice (auto: CUDA when present); `precision`: the autocast dtype (None: bf16
    where the card has it, else fp32)."""
    from albert_exp.devices import OnDevice, on_device
    from albert_exp.windows import evaluate as evaluate_windows

    if precision is None or isinstance(device, str):
        run = on_device(model, device if isinstance(device, str) else device.type, "finetune.device")
    else:
        run = model if device.type == "cpu" and precision == "fp32" else OnDevice(model, device, precision)
    return evaluate_windows(run, data, batch_size, pad_id)


def token_loss(model: Any, batch: dict, encoder: Any, tokens: float) -> dict[str, Any]:
    """The recipe's loss (mean cross-entropy over all real tokens of a batch), as this micro-batch's share of its
    optimiser step: its summed token cross-entropy / `tokens`, the global batch's real tokens / world size. Summed
    over a rank's micro-batches and averaged over ranks (DDP's gradient average) that is the global batch's mean,
    however it is split: the one normalisation of one process with accumulation and of N ranks."""
    import torch.nn.functional as F

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ce = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE, reduction="sum")
    return {"loss": ce / tokens, "ce": ce.detach()}


class Steps:
    """One epoch's optimiser steps for a DataLoader: step b is this rank's micro-batches of the global batch b
    (the epoch's seeded order), padded on the CPU, with the global batch's count of real tokens.

    The global batch is cut into world x accumulation parts of batch / parts rows; part g goes to rank g % world
    (as pretraining's data does), so each part is the same rows, padded alike, whatever the world size. A short
    last batch may leave parts empty: they get one row with no labelled token (nothing to learn, a zero share)
    so that every rank still runs its forward and backward."""

    def __init__(self, data: Any, order: list[int], batch: int, parts: int, rank: int, world: int, pad: int):
        self.data, self.order, self.batch, self.parts, self.pad = data, order, batch, parts, pad
        self.mine = range(rank, parts, world)
        self.tokens = [sum(y != IGNORE for y in labels) for labels in data.labels]

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch)

    def __getitem__(self, b: int) -> tuple[list[tuple[int, dict]], int]:
        from albert_exp.windows import collate

        rows = self.order[b * self.batch : (b + 1) * self.batch]
        size = self.batch // self.parts
        out = []
        for g in self.mine:
            part = rows[g * size : (g + 1) * size]
            ids = [self.data.input_ids[k] for k in part or rows[:1]]
            labels = [self.data.labels[k] for k in part] if part else [[IGNORE] * len(ids[0])]
            out.append((g, collate(ids, labels, self.pad)))
        return out, sum(self.tokens[k] for k in rows)


def _from_main(dist: Any, fn: Callable[[], Any]) -> Any:
    """`fn()` on rank 0, its value (or its error) on every rank (a world of one: just `fn()`)."""
    from albert_exp import ranks

    if dist.world == 1:
        return fn()
    outcome: tuple[str, Any] | None = None
    if dist.main:
        try:
            outcome = ("ok", fn())
        except Exception as exc:  # every rank raises it, none waits for a rank that failed
            outcome = ("error", exc)
    status, value = ranks.share(outcome)
    if status == "error":
        raise value
    return value


def _resume(out: Path, key: str, model: Any, opt: Any, sched: Any, scaler: Any, dist: Any) -> dict | None:
    """Loads the last epoch checkpoint written under `key` into model, optimiser, schedule (and scaler); returns
    its loop state (None: start afresh). Rank 0 looks and cleans up, the others read what it found."""
    import shutil

    from albert_exp import checkpoint

    def look() -> tuple[str, dict] | None:
        point = checkpoint.resume_point(out, key)
        if point is None:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)  # another identity's: never resumed
            return None
        checkpoint.ensure_best(out, point[1]["best"]["epoch"] or None, BEST)
        return str(point[0]), point[1]

    point = _from_main(dist, look)
    if point is None:
        return None
    ckpt, state = Path(point[0]), point[1]
    model.load_state_dict(load_model(type(model), ckpt, use_safetensors=True).state_dict(), strict=True)
    checkpoint.restore(ckpt, opt, sched)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if dist.main:
        print(f"resuming fine-tuning after epoch {state['step']} from {ckpt}")
    return state


BEST = "best_model"
LOG_EVERY = 20  # optimiser steps between two finetune/batch_loss points (each one syncs the host)


def _micro_seed(seed: int, step: int, part: int) -> int:
    """The dropout seed of one part of one step: the same masks whatever rank or accumulation slot runs it."""
    return (seed * 1_000_003 + step) * 1_009 + part


def _step(loop: Any, parts: list[tuple[int, dict]], tokens: int, step: int) -> Any:
    """One optimiser step over this rank's parts of the global batch; returns their summed token cross-entropy
    (on the device, no host sync)."""
    import torch

    ce = None
    for i, (g, batch) in enumerate(parts):
        torch.manual_seed(_micro_seed(loop.seed, step, g))
        batch = {k: v.to(loop.device, non_blocking=True) for k, v in batch.items()}
        with loop.no_sync(i < len(parts) - 1):  # one all-reduce per step
            with loop.cast():
                out = loop.forward(batch, tokens / loop.dist.world)
            (loop.scaler.scale(out["loss"]) if loop.scaler else out["loss"]).backward()
        ce = out["ce"].double() if ce is None else ce + out["ce"].double()  # float64, as the sum over ranks
    if loop.scaler:
        loop.scaler.unscale_(loop.opt)
    torch.nn.utils.clip_grad_norm_(loop.params, loop.max_grad_norm)
    if loop.scaler:
        loop.scaler.step(loop.opt)
        loop.scaler.update()
    else:
        loop.opt.step()
    loop.sched.step()
    loop.opt.zero_grad(set_to_none=True)
    return ce


def planned_epochs(f: Any, steps_per_epoch: int) -> int:
    """The epochs a training runs: `epochs`, or more where that many passes take fewer than `min_steps` steps
    (a few hundred labelled reviews make an epoch of a few steps)."""
    return max(f.epochs, math.ceil(f.min_steps / steps_per_epoch))


def evaluated(epoch: int, epochs: int, f: Any) -> bool:
    """Whether val is evaluated (and a checkpoint written) after `epoch` of `epochs`: every epoch, except where
    min_steps raised them; then after every ceil(epochs / f.epochs)-th and the last, at most f.epochs + 1 val
    passes (300 reviews of the realistic toy: 63 epochs, 112 s with 6 val passes, 153 s with 63)."""
    return epoch % math.ceil(epochs / f.epochs) == 0 or epoch == epochs


def _setup(cfg: ExperimentConfig, tokenizer: Any, steps_per_epoch: int, epochs: int) -> Any:
    """Device, precision, model, optimiser, scaler and the (DDP) forward of one training, as one namespace."""
    import types

    import torch

    from albert_exp.devices import autocast, grad_scaler, resolve_precision
    from albert_exp.pretrain.ddp import Dist

    f = cfg.finetune
    dist = Dist.init(f.device, where="finetune.device")  # torchrun: this rank (NCCL on GPUs, Gloo on CPU)
    dist.check(f, None, "finetune.batch_size")
    precision = resolve_precision(f.precision, dist.device, "finetune.precision")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if f.torch_threads:
        torch.set_num_threads(f.torch_threads)
    model = build_model(cfg, tokenizer).to(dist.device)
    opt, sched = make_optimizer(model, cfg, steps_per_epoch * epochs)
    forward, no_sync = dist.wrap(model, token_loss)
    return types.SimpleNamespace(
        dist=dist,
        device=dist.device,
        precision=precision,
        model=model,
        opt=opt,
        sched=sched,
        scaler=grad_scaler(dist.device, precision),
        forward=forward,
        no_sync=no_sync,
        cast=lambda: autocast(dist.device, precision),
        params=[p for p in model.parameters() if p.requires_grad],
        max_grad_norm=f.max_grad_norm,
        seed=cfg.seed,
        epochs=epochs,
    )


def _batches(loop: Any, cfg: ExperimentConfig, data: Any, epoch: int, pad: int) -> Any:
    import torch

    f = cfg.finetune
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch)).tolist()
    parts = loop.dist.world * f.gradient_accumulation_steps
    steps = Steps(data, order, f.batch_size, parts, loop.dist.rank, loop.dist.world, pad)
    return torch.utils.data.DataLoader(
        steps, batch_size=None, num_workers=f.num_workers, pin_memory=loop.device.type == "cuda"
    )


def _epoch(
    loop: Any,
    cfg: ExperimentConfig,
    data: Any,
    epoch: int,
    steps: int,
    pad: int,
    tracker: Tracker,
    label: str = "finetune",
) -> float:
    """One pass over the training windows; returns the mean token loss of the epoch (the global batches').
    The progress bar names the run (`label`: finetune, scratch, trial 3) and the epoch."""
    import torch
    from tqdm import tqdm

    dist = loop.dist
    loop.model.train()
    ce_sum = torch.zeros((), dtype=torch.float64, device=loop.device)  # on the device: no host sync per step
    tokens = 0
    desc = f"{label} epoch {epoch}/{loop.epochs}"
    bar = tqdm(desc=desc, total=steps, unit="batch", disable=not dist.main or None, leave=False)
    for b, (parts, n) in enumerate(_batches(loop, cfg, data, epoch, pad)):
        step = (epoch - 1) * steps + b + 1
        ce = _step(loop, parts, n, step)
        ce_sum += ce
        tokens += n
        bar.update(1)
        # every metric of the run is at the optimizer step (updates done); the last batch's step is the epoch's
        if b % LOG_EVERY == 0 and b < steps - 1:
            batch_loss = dist.sum(ce).item() / max(n, 1)  # the global batch's mean: one sync per log step
            bar.set_postfix(loss=f"{batch_loss:.4f}")
            tracker.log_metrics(
                {"finetune/batch_loss": batch_loss, "finetune/lr": loop.sched.get_last_lr()[0]}, step=step
            )
    bar.close()
    return dist.sum(ce_sum).item() / max(tokens, 1)


def epoch_line(label: str, epoch: int, epochs: int, train_loss: float, val: dict, best: int) -> str:
    """The terminal's line for an epoch: which run, the numbers a user reads, the best epoch so far (the full
    set of metrics is in the run)."""
    return (
        f"{label} epoch {epoch}/{epochs}: train loss {train_loss:.4f}, val phrase_f1 {val['phrase_f1']:.4f}, "
        f"token_accuracy {val['token_accuracy']:.4f}; best epoch {best}"
    )


def _validate(loop: Any, data: Any, batch_size: int, pad: int, train_loss: float) -> tuple[dict, dict]:
    """(the epoch's metrics row, the val metrics): rank 0's evaluation on the training device and precision."""
    val, _ = evaluate(loop.model, data, batch_size, pad, loop.device, loop.precision)
    return {"finetune/train_loss": train_loss, **{f"val/{k}": v for k, v in val.items()}}, val


def _save(
    loop: Any, out: Path, epoch: int, state: dict, improved: bool, tokenizer: Any, on_epoch: Any, val: dict
) -> None:
    """Rank 0: the epoch's checkpoint (and best model), then the caller's hook (which may stop the run)."""
    from albert_exp import checkpoint

    ckpt = checkpoint.save(out, epoch, loop.model, loop.opt, loop.sched, state, extra_files=tokenizer.save_pretrained)
    if improved:
        checkpoint.update_best(out, ckpt, BEST)
    checkpoint.prune(out, 1, state["best"]["epoch"])
    if on_epoch is not None:
        on_epoch(epoch, val)


def train(
    cfg: ExperimentConfig,
    tokenizer: Any,
    train_data: Any,
    val_data: Any,
    out: Path,
    tracker: Tracker,
    on_epoch: EpochHook | None = None,
    key: str | None = None,
    label: str = "finetune",
) -> dict[str, Any]:
    """Train with a checkpoint per epoch (albert_exp/checkpoint.py); resumes the last one written under `key`
    (default: this config, the data digests and the code version). Under torchrun every rank trains its share
    of each global batch (DDP); rank 0 alone evaluates, checkpoints and logs. `label` names the run in the
    terminal (its progress bar and one line per epoch); every metric goes to the tracker."""
    from albert_exp.digest import stage_key

    f = cfg.finetune
    steps_per_epoch = math.ceil(len(train_data) / f.batch_size)
    epochs = planned_epochs(f, steps_per_epoch)
    loop = _setup(cfg, tokenizer, steps_per_epoch, epochs)
    dist, model, pad = loop.dist, loop.model, tokenizer.pad_token_id
    key = key or stage_key("finetune", {"config": to_dict(cfg)}, {"train": train_data.digest, "val": val_data.digest})
    state = _resume(out, key, model, loop.opt, loop.sched, loop.scaler, dist)
    history: list[dict[str, float]] = state["history"] if state else []
    best = state["best"] if state else {"epoch": 0, "value": -math.inf}
    start_epoch = state["step"] + 1 if state else 1
    params = sum(p.numel() for p in model.parameters())
    tracker.log_params(
        {
            "derived.parameters": params,
            "derived.trainable_parameters": sum(p.numel() for p in loop.params),
            "derived.steps_per_epoch": steps_per_epoch,
            "derived.epochs": epochs,
            "derived.train_rows": len(train_data),
            "derived.precision": loop.precision,
        }
    )
    # where it ran may change between a run and its resume: tags, not params (which MLflow keeps immutable)
    tracker.set_tags({"finetune.ran_on": str(loop.device), "finetune.world_size": str(dist.world)})
    for epoch in range(start_epoch, epochs + 1):
        train_loss = _epoch(loop, cfg, train_data, epoch, steps_per_epoch, pad, tracker, label)
        if not evaluated(epoch, epochs, f):
            tracker.log_metrics({"finetune/train_loss": train_loss, "epoch": epoch}, step=epoch * steps_per_epoch)
            continue
        validate = functools.partial(_validate, loop, val_data, f.eval_batch_size, pad, train_loss)
        row, val = _from_main(dist, validate)
        tracker.log_metrics({**row, "epoch": epoch}, step=epoch * steps_per_epoch)
        history.append({"epoch": epoch, **row})
        value = val[f.select_metric]
        improved = value > best["value"]
        if improved:
            best = {"epoch": epoch, "value": value}
        if dist.main:
            print(epoch_line(label, epoch, epochs, train_loss, val, best["epoch"]), flush=True)
        state = {"key": key, "history": history, "best": best, "mlflow_run_id": tracker.run_id}
        if loop.scaler is not None:  # fp16: the loss scale continues where it was
            state["scaler"] = loop.scaler.state_dict()
        save = functools.partial(_save, loop, out, epoch, state, improved, tokenizer, on_epoch, val)
        _from_main(dist, save)
    return {
        "history": history,
        "best_epoch": best["epoch"],
        "best_step": best["epoch"] * steps_per_epoch,
        "best_value": best["value"],
        "parameters": params,
        "precision": loop.precision,
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
                f"data.{split}_rows": len(d.texts) - d.augmented,  # the CSV's rows used
                f"data.{split}_dropped_rows": len(d.dropped),
                **({f"data.{split}_augmented_rows": d.augmented} if d.augmented else {}),
                f"data.{split}_windows": len(d),  # rows longer than one window are cut into several
                f"data.{split}_windowed_rows": d.windowed_rows,
            }
        )
    on_epoch = ctx.hooks.get("on_epoch")
    label = ctx.hooks.get("label") or ctx.stage or "finetune"  # a search's trial, else the stage: scratch, finetune
    trained = train(cfg, tokenizer, data["train"], data["val"], out, tracker, on_epoch, key=ctx.key, label=label)
    from albert_exp.pretrain import ddp

    # rank 0 alone scores the best epoch on test and logs the models; every rank returns its results
    return _from_main(ddp.current(), lambda: _finish(ctx, tracker, tokenizer, data, trained, digest))


def _finish(ctx: Context, tracker: Tracker, tokenizer: Any, data: dict, trained: dict, digest: str) -> dict[str, Any]:
    cfg, out = ctx.cfg, ctx.work
    f = cfg.finetune
    best_dir = out / BEST
    model = build_model(cfg, tokenizer, best_dir)
    test, _ = evaluate(model, data["test"], f.eval_batch_size, tokenizer.pad_token_id, f.device)
    # one value each, not a point of the training curves: logged without a step (MLflow's step 0), which the run
    # page draws as a bar, not as a dot at the best epoch's step; the logged models carry them (_log_models)
    tracker.log_metrics({f"test/{k}": v for k, v in test.items()}, step=0)
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
    pinned = {f"finetune.{k}": str(p[s].resolve()) for k, s in _PATHS.items()}
    return with_overrides(cfg, {"workdir": str(workdir), **pinned})


_PATHS = {"tokenizer_dir": "tokenizer", "train_csv": "train", "val_csv": "val", "test_csv": "test"}


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
    return with_overrides(
        cfg, {"finetune.model_dir": upstream["pretrain"]["model_dir"], "finetune.tokenizer_dir": tokenizer}
    )


def key_extra(cfg: ExperimentConfig) -> dict[str, Any]:
    """A fresh model's architecture; the precision it trains in on this host (auto is fp32 here, bf16 there)."""
    from albert_exp.devices import resolve_device, resolve_precision

    f = cfg.finetune
    precision = resolve_precision(f.precision, resolve_device(f.device, "finetune.device"), "finetune.precision")
    return {"precision": precision, **({} if f.model_dir else {"model": settings(cfg, "model")})}


def describe(cfg: ExperimentConfig) -> str:
    f = cfg.finetune
    if not f.model_dir:
        start = "from scratch"
    elif Path(f.model_dir).parent.name.startswith("pretrain@"):  # the pretrain stage's weights
        start = "pretrained"
    else:
        start = f"from {Path(f.model_dir).name}"
    return f"{start} lr={f.learning_rate:g}"


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
    distributed=True,  # every torchrun rank trains its share of each batch; rank 0 alone writes and logs
)


def _log_models(tracker: Tracker, best_dir: Path, examples: list[str], f: Any, step: int) -> None:
    """The HF model (artifacts, loadable back with from_pretrained for further training) and the pyfunc, whose
    page in the UI shows the metrics of the best epoch's step (val, epoch) and the test figures (step 0)."""
    from albert_exp.serving import log_phrase_extractor

    tracker.log_artifacts(best_dir, "hf_model")
    info = log_phrase_extractor(
        best_dir, examples, f.max_seq_length, window_stride=f.window_stride, aggregation=f.aggregation
    )
    tracker.link_model_metrics(info.model_id, 0, step)
