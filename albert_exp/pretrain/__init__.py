"""`albert-exp pretrain`: ALBERT pretraining (MLM + SOP) in PyTorch on TFRecord shards.

    albert-exp pretrain --config experiments/pretrain_tiny.yaml
    albert-exp pretrain --config experiments/albert_base_recipe.yaml --init-from albert_base_hub/
    albert-exp pretrain --config experiments/pretrain_tiny.yaml --skip-corrupt   # count, don't stop
    torchrun --nproc-per-node 8 -m albert_exp pretrain --config cfg.yaml        # data parallel (ddp.py)

Run the same command again after a crash or a kill: it resumes from the last checkpoint in the output dir
(the config must be unchanged; a different experiment needs a new pretrain.output_dir). `run(cfg)` returns
{"model_dir": <dir of the best HF checkpoint>, ...}; AlbertForTokenClassification.from_pretrained loads it.

Pieces: data.py (streaming, resumable batches), optim.py (LAMB, schedule, plateau), checkpoint.py, loop.py,
ddp.py (torchrun: ranks, DDP, what rank 0 alone does).
"""

from __future__ import annotations

from pathlib import Path

from albert_exp.errors import UserError
from albert_exp.hf_local import load_model, load_tokenizer


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
    pc = cfg.pretrain
    if pc.init_from:
        from albert_exp.convert.hf import load_any

        model, info = load_any(pc.init_from, pc.albert_config)
    else:
        from transformers import AlbertForPreTraining

        # google's gelu is the tanh approximation ("gelu_new", set by albert_config)
        model = AlbertForPreTraining(cfg.model.albert_config(vocab_size(cfg), classifier_dropout_prob=0.0))
        info = {"format": "fresh"}
    if model.config.max_position_embeddings < pc.max_seq_length:
        raise UserError(
            f"max_seq_length {pc.max_seq_length} > the model's max_position_embeddings "
            f"{model.config.max_position_embeddings}",
            where="pretrain.max_seq_length",
        )
    model.sop_classifier.dropout.p = 0.0  # google's SOP head has no dropout
    return model, info


def _check_same_config(cfg, saved: dict, where) -> None:
    """A resume continues the same run (same MLflow params): the resolved config must not have changed."""
    from albert_exp.config import flatten, to_dict

    now, then = flatten(to_dict(cfg)), flatten(saved)
    changed = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k) and k != "description")
    if changed:
        detail = ", ".join(f"{k}: {then.get(k)!r} -> {now.get(k)!r}" for k in changed[:3])
        raise UserError(
            f"the config differs from the checkpoint's ({detail})",
            where=str(where),
            fix="resume with the same config, or set pretrain.output_dir to a new directory",
        )


def run(cfg) -> dict:
    import torch

    from albert_exp.pretrain import checkpoint, data
    from albert_exp.pretrain.loop import State
    from albert_exp.pretrain.optim import Plateau, make_optimizer, make_schedule

    pc = cfg.pretrain
    out = Path(pc.output_dir) if pc.output_dir else cfg.stage_dir("pretrain")
    files = data.resolve_inputs(pc.input, cfg.stage_dir("pretraining-data"))  # TFRecords, or a dynamic manifest
    eval_files = data.resolve_eval_inputs(pc.eval_input)  # TFRecords, or a dynamic manifest
    scaled = pc.scaled()
    last_step = min(scaled.num_train_steps, pc.max_steps or scaled.num_train_steps)
    if pc.torch_threads:
        torch.set_num_threads(pc.torch_threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    from albert_exp.pretrain.ddp import Dist

    dist = Dist.init()  # torchrun: this rank (NCCL on GPUs, Gloo on CPU); else a world of one (ddp.py)
    device = dist.device
    dist.check(pc, None if data.dynamic_manifest(files) else max(1, pc.num_workers), cfg.source)

    resume_from = checkpoint.latest(out) if pc.resume else None
    if not pc.resume and checkpoint.checkpoint_dirs(out):
        raise UserError(
            "the output directory already has checkpoints and resume is false",
            where=str(out),
            fix="set pretrain.output_dir to a new directory, or delete the old checkpoints",
        )
    saved = checkpoint.load_trainer_state(resume_from) if resume_from else None
    torch.manual_seed(cfg.seed)
    if resume_from:
        from transformers import AlbertForPreTraining

        model = load_model(AlbertForPreTraining, resume_from)
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
        _check_same_config(cfg, saved.get("config") or {}, resume_from)
        dist.check_resume(saved, str(resume_from))
        if (saved["streams"], saved["micro_batch"]) != (streams, micro):
            raise UserError(
                f"the checkpoint was written with num_workers={saved['streams']} and micro-batch "
                f"{saved['micro_batch']}, this run has {streams} and {micro}",
                where=str(resume_from),
                fix="resume with the same num_workers, batch_size and gradient_accumulation_steps",
            )
        ts = checkpoint.load_training_state(resume_from)
        optimizer.load_state_dict(ts["optimizer"])
        scheduler.load_state_dict(ts["scheduler"])
        checkpoint.set_rng_state(ts["rng"])
        state = State(**{k: saved[k] for k in State.__dataclass_fields__})
        plateau.load_state_dict(saved["plateau"])
    n_params = sum(p.numel() for p in model.parameters())
    derived = {
        **scaled.as_params(),
        "derived.last_step": last_step,
        "derived.parameters": n_params,
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

    return _train(
        cfg,
        out,
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
        last_step,
        device,
    )


def _train(
    cfg,
    out,
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
    last_step,
    device,
) -> dict:
    from albert_exp.config import to_dict
    from albert_exp.pretrain import checkpoint, ddp
    from albert_exp.pretrain.loop import Trainer
    from albert_exp.tracking import get_run, stage_run, write_results

    pc, scaled = cfg.pretrain, cfg.pretrain.scaled()
    n_params = derived["derived.parameters"]
    dist = ddp.current()
    saved_run = checkpoint.load_trainer_state(resume_from).get("mlflow_run_id") if resume_from else None
    resume_run = saved_run if saved_run and dist.main and get_run(saved_run) else None  # None: another store
    with stage_run(
        cfg,
        "pretrain",
        f"{n_params / 1e6:.1f}M lr={scaled.learning_rate:g}",
        extra_params=derived,
        resume_run_id=resume_run,
        enabled=dist.main,  # rank 0 alone logs: one MLflow run per training
    ) as tracker:
        if dist.main:
            print(
                f"pretrain: {scaled.rule}; batch {scaled.batch_size} -> {scaled.num_train_steps} steps, "
                f"{scaled.num_warmup_steps} warm-up, lr {scaled.learning_rate:g}; "
                + (f"resuming at step {state.step}" if resume_from else f"init: {init_info.get('format')}")
                + f"; {dist.world} processes" * (dist.world > 1)
            )
        extra = {"mlflow_run_id": tracker.run_id, "config": to_dict(cfg), "init": init_info, "world_size": dist.world}
        trainer = Trainer(
            model,
            optimizer,
            scheduler,
            pc=pc,
            files=files,
            eval_data=eval_data,
            output_dir=out,
            tracker=tracker,
            seed=cfg.seed,
            total_steps=scaled.num_train_steps,
            device=device,
            state=state,
            plateau=plateau,
            extra_state=extra,
            compile=pc.compile,
            dist=dist,
        )
        if resume_from and dist.main:
            pending = checkpoint.load_trainer_state(resume_from).get("pending_metrics", [])
            trainer.flush(resume_from, [(step, m) for step, m in pending], resuming=True)
        result = trainer.train(last_step)
        best = out / "best"
        results = {
            **result,
            "model_dir": str(best if best.is_dir() else result["last_checkpoint"]),
            "output_dir": str(out),
            "resumed_from": str(resume_from) if resume_from else None,
            "derived": derived,
            "mlflow_run_id": tracker.run_id,
        }
        if dist.main:
            if best.is_dir():  # the weights fine-tuning starts from, beside the periodic checkpoints
                tracker.log_artifacts(best, "best")
            write_results(out, results, tracker)
    return results
