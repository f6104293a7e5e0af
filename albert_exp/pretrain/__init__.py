"""`albert-exp pretrain`: ALBERT pretraining (MLM + SOP) in PyTorch on TFRecord shards.

    albert-exp pretrain --config experiments/pretrain_tiny.yaml
    albert-exp pretrain --config experiments/albert_base_recipe.yaml --init-from albert_base_hub/
    albert-exp pretrain --config experiments/pretrain_tiny.yaml --skip-corrupt   # count, don't stop
    torchrun --nproc-per-node 8 -m albert_exp pretrain --config cfg.yaml        # data parallel (ddp.py)

Reads exactly the TFRecords the pretraining-data manifest lists (or `pretrain.input`). Run the same command
again after a crash or a kill: it resumes from the last checkpoint of the same stage identity (settings,
input digests, code: albert_exp/identity.py) and logs into the same MLflow run. Other settings train into
their own directory, renamed into place when complete; the link <workdir>/pretrain then points at it and the
earlier output stays where it was. `run(cfg)` returns {"model_dir": <dir of the best HF checkpoint>, ...};
AlbertForTokenClassification.from_pretrained loads it.

Pieces: data.py (streaming, resumable batches), optim.py (LAMB, schedule, plateau), loop.py, ddp.py (torchrun:
ranks, DDP, what rank 0 alone does), and the shared albert_exp/checkpoint.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from albert_exp.config import with_overrides
from albert_exp.errors import UserError
from albert_exp.hf_local import load_tokenizer
from albert_exp.identity import settings
from albert_exp.stage import Stage


def vocab_size(cfg) -> int:
    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    tok_dir = cfg.stage_dir("vocab") / "tokenizer"
    if not tok_dir.is_dir():
        raise UserError(
            "the vocabulary size is unknown",
            where=str(tok_dir),
            fix="run `albert-exp vocab` first, or set model.vocab_size",
        )
    return len(load_tokenizer(tok_dir))


def build_model(cfg):
    """A fresh AlbertForPreTraining from the `model:` section, or the weights of pretrain.init_from."""
    from albert_exp.modeling import build

    pc = cfg.pretrain
    if pc.init_from:
        from albert_exp.convert.hf import load_any

        model, info = load_any(pc.init_from, pc.albert_config)
    else:
        model = build("pretraining", arch=cfg.model, vocab_size=vocab_size(cfg), classifier_dropout_prob=0.0)
        info = {"format": "fresh"}
    if model.config.max_position_embeddings < pc.max_seq_length:
        raise UserError(
            f"max_seq_length {pc.max_seq_length} > the model's max_position_embeddings "
            f"{model.config.max_position_embeddings}",
            where="pretrain.max_seq_length",
        )
    model.sop_classifier.dropout.p = 0.0  # google's SOP head has no dropout
    return model, info


@dataclass
class Setup:
    """Everything the training run needs, resumed or fresh."""

    output: Any  # albert_exp.identity.StageOutput
    model: Any
    optimizer: Any
    scheduler: Any
    state: Any  # loop.State
    plateau: Any
    files: list[str]
    eval_data: list
    resume_from: Path | None
    init_info: dict
    derived: dict
    last_step: int
    device: Any


def output_link(cfg) -> Path:
    return Path(cfg.pretrain.output_dir) if cfg.pretrain.output_dir else cfg.stage_dir("pretrain")


def last_step(pc) -> int:
    """Where this run stops: the end of the schedule, or `max_steps` if that comes first. `max_steps` is a stop
    point on the same schedule (num_train_steps sets the lr decay), so it is not part of the stage identity: a
    run stopped there and rerun with a later stop (or none) continues the same output and MLflow run."""
    n = pc.scaled().num_train_steps
    return min(n, pc.max_steps or n)


def reached(pc, results: dict) -> bool:
    """Whether a complete output (its results.json) trained as far as `pc` asks: to its stop step, or to an
    earlier plateau stop of the same schedule. One stopped at a smaller max_steps is continued instead."""
    step, stop = results.get("step"), last_step(pc)
    return step == stop or (bool(results.get("stop_reason")) and step is not None and step <= stop)


def _past_the_stop(step: int, stop: int, where: Path) -> UserError:
    return UserError(
        f"the output of these settings has trained to step {step}, past the stop asked for (step {stop})",
        where=str(where),
        fix=f"set pretrain.max_steps to {step} or more to use it, or train afresh with --set pretrain.resume=false",
    )


def _resume(output, pc, main: bool) -> tuple[Path, dict] | None:
    """Where this training continues: the last checkpoint of a killed run of the same identity, else that of a
    complete one (rank 0 copies it to a new work directory, so the complete output stays intact until the copy
    replaces it; other ranks only read it), else nowhere (a fresh start, also with resume: false). A checkpoint
    past the stop asked for (max_steps) is a user error: training cannot go back."""
    import shutil

    from albert_exp import checkpoint

    point = None
    stop = last_step(pc)
    if pc.resume:
        done = output.complete()
        complete = done is not None
        if complete and done.get("step", 0) > stop:
            raise _past_the_stop(done["step"], stop, output.done)
        if main or not complete:
            point = checkpoint.resume_point(output.work, output.key)
            if point is not None and point[1]["step"] > stop:
                raise _past_the_stop(point[1]["step"], stop, point[0])
        if point is None and complete:
            if main:
                output.start(fresh=True)
                shutil.copytree(output.done, output.work, dirs_exist_ok=True)
            point = checkpoint.resume_point(output.work if main else output.done, output.key)
    if point is None:
        output.start(fresh=main)  # rank 0 starts this identity afresh
    return point


def prepare(ctx) -> Setup:
    """Model, optimiser, schedule and data position, resumed or fresh (on every rank, before the run opens)."""
    import torch

    from albert_exp import checkpoint
    from albert_exp.modeling import build
    from albert_exp.pretrain import data
    from albert_exp.pretrain.loop import State
    from albert_exp.pretrain.optim import Plateau, make_optimizer, make_schedule

    cfg, output = ctx.cfg, ctx.output
    pc = dataclasses.replace(cfg.pretrain, resume=cfg.pretrain.resume and not ctx.fresh)
    files = pretraining_files(cfg)  # TFRecords, or a dynamic manifest
    eval_files = data.resolve_eval_inputs(pc.eval_input)  # TFRecords, or a dynamic manifest
    scaled = pc.scaled()
    stop = last_step(pc)
    if pc.torch_threads:
        torch.set_num_threads(pc.torch_threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    from albert_exp.pretrain.ddp import Dist

    dist = Dist.init()  # torchrun: this rank (NCCL on GPUs, Gloo on CPU); else a world of one (ddp.py)
    device = dist.device
    dist.check(pc, None if data.dynamic_manifest(files) else max(1, pc.num_workers), cfg.source)

    point = _resume(output, pc, dist.main)
    resume_from, saved = point if point else (None, None)
    torch.manual_seed(cfg.seed)
    if resume_from:
        model = build("pretraining", model_dir=resume_from)
        model.sop_classifier.dropout.p = 0.0
        init_info = saved.get("init") or {"format": "unknown"}  # as first logged: MLflow params are immutable
    else:
        model, init_info = build_model(cfg)
    model.to(device)
    optimizer = make_optimizer(model, scaled.learning_rate, pc.weight_decay)
    scheduler = make_schedule(optimizer, scaled.num_warmup_steps, scaled.num_train_steps, pc.poly_power)
    state, plateau = State(), Plateau(pc.plateau_window, pc.plateau_min_improvement, pc.plateau_smoothing)
    streams, micro = max(1, pc.num_workers), pc.batch_size // (pc.gradient_accumulation_steps * dist.world)
    if saved:
        dist.check_resume(saved, str(resume_from))
        if (saved["streams"], saved["micro_batch"]) != (streams, micro):
            raise UserError(
                f"the checkpoint was written with num_workers={saved['streams']} and micro-batch "
                f"{saved['micro_batch']}, this run has {streams} and {micro}",
                where=str(resume_from),
                fix="resume with the same num_workers, batch_size and gradient_accumulation_steps",
            )
        checkpoint.restore(resume_from, optimizer, scheduler)
        state = State(**{k: saved[k] for k in State.__dataclass_fields__})
        plateau.load_state_dict(saved["plateau"])
        checkpoint.ensure_best(output.work, state.best.get("step"))
    derived = {
        **scaled.as_params(),
        "derived.last_step": stop,
        "derived.parameters": sum(p.numel() for p in model.parameters()),
        "derived.tokens_per_step": pc.batch_size * pc.max_seq_length,
        "derived.micro_batch": micro,
        "derived.world_size": dist.world,
        "derived.init": init_info.get("format"),
        "derived.input_files": len(files),
    }
    eval_data = (
        data.eval_batches(eval_files, n=pc.eval_batches, batch_size=micro, max_seq_length=pc.max_seq_length)
        if eval_files and dist.main  # rank 0 alone evaluates
        else []
    )
    return Setup(
        output,
        model,
        optimizer,
        scheduler,
        state,
        plateau,
        files,
        eval_data,
        resume_from,
        init_info,
        derived,
        stop,
        device,
    )


def compute(ctx) -> dict:
    from albert_exp import checkpoint
    from albert_exp.pretrain import ddp
    from albert_exp.pretrain.loop import Trainer

    cfg, s, tracker = ctx.cfg, ctx.prepared, ctx.tracker
    pc, scaled = cfg.pretrain, cfg.pretrain.scaled()
    dist = ddp.current()
    out = s.output.work
    if dist.main:
        print(
            f"pretrain: {scaled.rule}; batch {scaled.batch_size} -> {scaled.num_train_steps} steps, "
            f"{scaled.num_warmup_steps} warm-up, lr {scaled.learning_rate:g}; "
            + (f"resuming at step {s.state.step}" if s.resume_from else f"init: {s.init_info.get('format')}")
            + f"; {dist.world} processes" * (dist.world > 1)
        )
    extra = {"mlflow_run_id": tracker.run_id, "key": s.output.key, "init": s.init_info, "world_size": dist.world}
    trainer = Trainer(
        s.model,
        s.optimizer,
        s.scheduler,
        pc=pc,
        files=s.files,
        eval_data=s.eval_data,
        output_dir=out,
        tracker=tracker,
        seed=cfg.seed,
        total_steps=scaled.num_train_steps,
        device=s.device,
        state=s.state,
        plateau=s.plateau,
        extra_state=extra,
        compile=pc.compile,
        dist=dist,
    )
    if s.resume_from and dist.main:
        pending = checkpoint.load_trainer_state(s.resume_from).get("pending_metrics", [])
        trainer.flush(s.resume_from, [(step, m) for step, m in pending], resuming=True)
    result = trainer.train(s.last_step)
    done = s.output.done
    last = result["last_checkpoint"]  # None on other ranks than 0 (they write nothing)
    last_done = str(done / Path(last).relative_to(out)) if last else None
    results = {
        **result,
        "last_checkpoint": last_done,
        "model_dir": str(done / "best") if (out / "best").is_dir() else last_done,
        "input_files": s.files,
        "resumed_from": str(s.resume_from) if s.resume_from else None,
        "derived": s.derived,
        "mlflow_run_id": tracker.run_id,
    }
    if dist.main and (out / "best").is_dir():  # the weights fine-tuning starts from, beside the checkpoints
        _with_tokenizer(cfg, out / "best")
        tracker.log_artifacts(out / "best", "best")
    return results


def _with_tokenizer(cfg, best: Path) -> None:
    """The best weights carry the vocabulary they were trained with, so `finetune --model-dir <workdir>/pretrain/best`
    finds its tokenizer there (the model files and the tokenizer's have different names)."""
    import shutil

    tokenizer = cfg.stage_dir("vocab") / "tokenizer"
    if not cfg.pretrain.init_from and (tokenizer / "tokenizer_config.json").is_file():
        shutil.copytree(tokenizer, best, dirs_exist_ok=True)


def pretraining_files(cfg) -> list[str]:
    """The TFRecords pretraining reads (or the manifest of dynamic data): `pretrain.input` if given, else exactly
    the files the pretraining-data manifest lists (never a glob over the directory, which would pick up files of
    other runs)."""
    import json

    from albert_exp.pretraining_data import output_link as data_link

    if cfg.pretrain.input:
        from albert_exp.pretrain.data import resolve_inputs

        return resolve_inputs(cfg.pretrain.input, cfg.stage_dir("pretraining-data"))
    manifest = data_link(cfg) / "manifest.json"
    if not manifest.is_file():
        raise UserError(
            "pretraining-data manifest not found",
            where=str(manifest),
            fix="run `albert-exp pretraining-data` first, or set pretrain.input to TFRecord files or globs",
        )
    listed = json.loads(manifest.read_text())
    if listed.get("mode") == "dynamic":  # documents masked on the fly: the loader reads the manifest
        return [str(manifest.resolve())]
    return [str(manifest.resolve().parent / s["path"]) for s in listed["shards"]]


def inputs(cfg) -> dict[str, Path | list[Path]]:
    """The TFRecords (exactly those pretrain.input or the pretraining-data manifest names), the weights it starts
    from, the held-out records, and the tokenizer when the vocabulary size comes from it."""
    from albert_exp.pretraining_data import output_link as data_link

    pc = cfg.pretrain
    paths: dict[str, Path | list[Path]] = {}
    if pc.input:
        paths["tfrecords"] = [Path(f) for f in pretraining_files(cfg)]
    else:
        paths["pretraining_data_manifest"] = data_link(cfg) / "manifest.json"
    if pc.init_from:
        paths["init_from"] = Path(pc.init_from)
    if pc.eval_input:
        from albert_exp.pretrain.data import resolve_eval_inputs

        paths["eval"] = [Path(f) for f in resolve_eval_inputs(pc.eval_input)]
    if not pc.init_from and not cfg.model.vocab_size:
        paths["tokenizer"] = cfg.stage_dir("vocab") / "tokenizer"  # the vocabulary size comes from it
    return paths


def needs(cfg) -> tuple[str, ...]:
    from albert_exp import heldout

    pc = cfg.pretrain
    return (
        ("pretraining-data",) * (not pc.input)
        + ("vocab",) * (not pc.init_from and not cfg.model.vocab_size)
        + ("heldout",) * heldout.applies(cfg)
    )


def configure(cfg, upstream):
    """The toy's pretraining evaluates on the held-out records (albert_exp/heldout.py), in `main` and alone."""
    if "heldout" not in upstream:
        return cfg
    return with_overrides(cfg, {"pretrain.eval_input": upstream["heldout"]["files"]})


def _describe(cfg) -> str:
    return f"lr={cfg.pretrain.scaled().learning_rate:g}"


STAGE = Stage(
    name="pretrain",
    section="pretrain",
    compute=compute,
    inputs=inputs,
    needs=needs,
    key_extra=lambda cfg: {} if cfg.pretrain.init_from else {"model": settings(cfg, "model")},  # a fresh model
    configure=configure,
    prepare=prepare,
    params=lambda ctx: ctx.prepared.derived,
    link=output_link,
    describe=_describe,
    resumable=True,
    reached=lambda cfg, results: reached(cfg.pretrain, results),
    distributed=True,
)
