"""Pretraining throughput, side by side. Prints sequences/s and ratios.

    .venv/bin/python benchmarks/pretrain.py                 # CPU: ours vs HF Trainer (tiny, small), loader vs step
    .venv/bin/python benchmarks/pretrain.py --suite sync --baseline /tmp/before
                                                            # CPU: the loop's step time, this code vs another tree
    .venv/bin/python benchmarks/pretrain.py --suite gpu     # ALBERT-base, seq 64/128, batch 512, bf16: seq/s,
                                                            # tokens/s, MFU; then 1 vs N processes (torchrun)
    .venv/bin/python benchmarks/pretrain.py --suite gpu --smoke-cpu 2 --steps 3 --compile off
                                                            # its code paths on CPU (tiny model, 2 Gloo ranks)

* ours: albert_exp.pretrain (TFRecord stream -> AlbertForPreTraining, MLM loss on the gathered masked
  positions + SOP, LAMB, clipping), the loop's own step function.
* HF: transformers.Trainer + DataCollatorForLanguageModeling (dynamic masking, MLM logits over every
  position) on the same model class, the same token ids and batch size, AdamW (the Trainer's default).
* ours, MLM head on every position: the same step, but the vocabulary projection runs on all positions as
  HF's does (every position of the batch is a prediction, weight 0 where nothing is masked: the same loss),
  so "ours full / HF" compares the same model work and "ours / ours full" is what gathering saves.
* Fair by default: the sides run alternated (--runs rounds of ours, ours full, HF, the order reversed every
  other round; medians), with the same pinned number of torch threads (--threads, default 1: on a shared
  machine more threads measure the load).
* loader: our TFRecord stream alone (decode + collate, one process) vs what one training step consumes; the
  loader must be >= 5x faster than training so it never limits it (more worker processes scale it further).
* sync: the whole training loop (loop.Trainer.train: loader, accumulation, LAMB, the metric syncs; a no-op
  tracker, one checkpoint at the end of each timed stretch, which both sides write) in a child process per
  run, this tree against --baseline (a tree of the code before, e.g. `git archive REV | tar -x -C DIR`),
  alternated, medians; default log_every_steps (100) and 2 micro-batches per step. Without --baseline: this
  tree logging every step (a host sync per step) against every 100 steps.

* gpu: ALBERT-base (12M parameters, 12 x 768), batch 512 per GPU, bf16 autocast, SDPA attention
  (transformers' default for ALBERT), LAMB with its foreach path, with and without torch.compile, at seq 64
  (10 predictions) and 128 (20). tokens/s counts padded positions (seq/s x seq) and real ones (the synthetic
  sequences hold seq/2..seq tokens). MFU = model FLOPs (matmuls, forward + backward) / the GPU's dense bf16
  peak. With N > 1 GPUs the same step runs under torchrun in N processes through albert_exp.pretrain.ddp
  (DDP, NCCL; what `torchrun -m albert_exp pretrain` runs) and the total and per-GPU rates are printed
  against one process.

Synthetic TFRecords with google's features are written to a temp dir; nothing is downloaded.

Measured 2026-12-07 on a 2-core machine shared with 4 other sessions (load average 1.9-2.7), 1 thread:
    --steps 10 --runs 3 (2 min 22 s)         ours   ours full   HF      ours/HF   ours full/HF
    tiny                                     330.9    257.0    253.8    1.30x      1.01x
    small                                     42.3     30.2     29.3    1.44x      1.03x
    With the same MLM-head work the two are level: the 1.30x / 1.44x is gathering the masked positions.
    --suite sync --baseline <tree of 273f3e5> --models tiny --steps 60 --runs 6 (2 min 36 s): 90.6 -> 93.6
    CPU-ms/step (1.03; single runs spread 80-105): no measurable change on CPU, where a host sync costs
    microseconds; the per-log-step sync is for GPUs, whose stream each `.item()` stalled.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from albert_exp.pretrain import data, optim  # noqa: E402
from albert_exp.pretrain.loop import batch_losses  # noqa: E402
from albert_exp.tfrecord import encode_example, write_records  # noqa: E402

SEQ, PRED = 64, 10
CONFIGS = {
    "tiny": dict(
        vocab_size=1000,
        embedding_size=64,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
    ),
    "small": dict(
        vocab_size=8000,
        embedding_size=128,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
    ),
    "base": dict(
        vocab_size=30000,
        embedding_size=128,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
    ),
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peaks (FLOP/s)


PRED_FOR = {64: 10, 128: 20}  # google's max_predictions_per_seq for these lengths


def write_data(root: Path, vocab: int, n: int, seed: int = 0, seq: int = SEQ) -> list[str]:
    rng = np.random.default_rng(seed)
    pred = PRED_FOR.get(seq, PRED)
    examples = []
    for _ in range(n):
        length = int(rng.integers(seq // 2, seq + 1))
        ids = np.zeros(seq, np.int64)
        ids[:length] = rng.integers(5, vocab, length)
        ids[0], ids[length - 1] = 2, 3
        seg = np.zeros(seq, np.int64)
        seg[length // 2 : length] = 1
        pos = np.sort(rng.choice(np.arange(1, length - 1), pred, replace=False))
        examples.append(
            encode_example(
                {
                    "input_ids": ids,
                    "input_mask": (np.arange(seq) < length).astype(np.int64),
                    "segment_ids": seg,
                    "token_boundary": np.ones(seq, np.int64),
                    "masked_lm_positions": pos,
                    "masked_lm_ids": ids[pos],
                    "masked_lm_weights": np.ones(pred, np.float32),
                    "next_sentence_labels": [int(rng.integers(0, 2))],
                }
            )
        )
    path = root / f"bench-{vocab}-{seq}.tfrecord"
    write_records(path, examples)
    return [str(path)]


def model_config(name: str) -> dict:
    """AlbertConfig arguments of a CONFIGS model (no dropout: the same work on every side)."""
    return dict(
        CONFIGS[name],
        max_position_embeddings=512,
        hidden_act="gelu_new",
        classifier_dropout_prob=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def build(name: str, device: str = "cpu"):
    from transformers import AlbertConfig, AlbertForPreTraining

    torch.manual_seed(0)
    return AlbertForPreTraining(AlbertConfig(**model_config(name))).to(device)


def every_position(b: dict) -> dict:
    """The batch with every position as an MLM prediction (weight 0 where nothing is masked): batch_losses
    then projects every position onto the vocabulary, as HF's head does, for the same loss."""
    n, seq = b["input_ids"].shape
    ids = torch.zeros(n, seq, dtype=b["mlm_ids"].dtype).scatter_(1, b["mlm_positions"], b["mlm_ids"])
    w = torch.zeros(n, seq, dtype=b["mlm_weights"].dtype).scatter_(1, b["mlm_positions"], b["mlm_weights"])
    return {**b, "mlm_positions": torch.arange(seq).expand(n, seq), "mlm_ids": ids, "mlm_weights": w}


def ours(
    name: str,
    files: list[str],
    batch: int,
    steps: int,
    device: str = "cpu",
    bf16: bool = False,
    compile: bool = False,
    seq: int = SEQ,
    dist=None,
    full_head: bool = False,
) -> float:
    """Sequences/s of our training step, data included (in-process stream on CPU, prefetched on GPU).
    dist: an albert_exp.pretrain.ddp.Dist of a torchrun job: the step goes through DDP (this rank's rate).
    full_head: the MLM head on every position (HF's work), see every_position."""
    model = build(name, device)
    opt = optim.make_optimizer(model, 1e-3)
    encoder = torch.compile(model.albert) if compile else None
    forward = (
        (lambda b: batch_losses(model, b, encoder)) if dist is None else dist.wrap(model, batch_losses, encoder)[0]
    )
    stream = data.Stream(files, 0, 1, batch_size=batch, max_seq_length=seq, seed=0, block=4096).batches()
    batches = [next(stream) for _ in range(4)] if device != "cpu" else None

    def step(i: int) -> None:
        b = batches[i % len(batches)] if batches else next(stream)
        b = every_position(b) if full_head else b
        b = {k: v.to(device, non_blocking=True) for k, v in b.items() if isinstance(v, torch.Tensor)}
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss = forward(b)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    warm = 3 if not compile else 10
    for i in range(warm):
        step(i)
    if device != "cpu":
        torch.cuda.synchronize()
    if dist is not None and dist.world > 1:
        torch.distributed.barrier()
    t = time.perf_counter()
    for i in range(steps):
        step(i)
    if device != "cpu":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t)


def hf_trainer(name: str, files: list[str], batch: int, steps: int, tmp: Path) -> float:
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast, Trainer, TrainingArguments

    from albert_exp.tfrecord import decode_example, iter_records

    rows = [decode_example(p) for f in files for _, p in iter_records(f)]
    # AlbertForPreTraining returns a loss only with both MLM labels (from the collator) and SOP labels.
    dataset = [
        {
            "input_ids": r["input_ids"][r["input_mask"] > 0].tolist(),
            "token_type_ids": r["segment_ids"][r["input_mask"] > 0].tolist(),
            "sentence_order_label": int(r["next_sentence_labels"][0]),
        }
        for r in rows
    ]
    vocab = {f"t{i}": i for i in range(CONFIGS[name]["vocab_size"])}
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="t1")), pad_token="t0", mask_token="t4", unk_token="t1"
    )
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
    args = TrainingArguments(
        output_dir=str(tmp / "hf"),
        per_device_train_batch_size=batch,
        max_steps=steps + 3,
        report_to="none",
        save_strategy="no",
        logging_steps=10**9,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    from transformers import TrainerCallback

    marks: dict[int, float] = {}

    class Clock(TrainerCallback):  # time steps 4.. like ours (3 warm-up steps excluded on both sides)
        def on_step_end(self, args, state, control, **kw):
            marks[state.global_step] = time.perf_counter()

    trainer = Trainer(model=build(name), args=args, train_dataset=dataset, data_collator=collator, callbacks=[Clock()])
    trainer.train()
    return steps * batch / (marks[steps + 3] - marks[3])


# One timed stretch of loop.Trainer.train in a child process (PYTHONPATH: the tree measured).
LOOP = """
import json, sys, tempfile, time
from pathlib import Path
import torch
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
from transformers import AlbertConfig, AlbertForPreTraining
from albert_exp.config import load_config
from albert_exp.pretrain import optim
from albert_exp.pretrain.loop import State, Trainer

class NoTracker:
    def log_history(self, rows): pass
    def logged_steps(self, keys): return set()
    def log_artifact(self, *a): pass
    def set_tags(self, tags): pass

torch.manual_seed(0)
model = AlbertForPreTraining(AlbertConfig(**a["model"]))
pc = load_config(None, a["overrides"]).pretrain
opt = optim.make_optimizer(model, 1e-3)
sched = optim.make_schedule(opt, 10, 10**6)
with tempfile.TemporaryDirectory() as out:
    t = Trainer(model, opt, sched, pc=pc, files=a["files"], eval_data=[], output_dir=Path(out), tracker=NoTracker(),
                seed=0, total_steps=10**6, device=torch.device("cpu"), state=State(),
                plateau=optim.Plateau(0, 0.0, 0.98), extra_state={})
    t.train(a["warm"])
    t0, c0 = time.perf_counter(), time.process_time()
    t.train(a["warm"] + a["steps"])
    print("RESULT", (time.perf_counter() - t0) / a["steps"], (time.process_time() - c0) / a["steps"])
"""


def loop_step_s(
    tree: Path, name: str, files: list[str], batch: int, steps: int, log_every: int, threads: int
) -> tuple[float, float]:
    """(wall, CPU) seconds per optimiser step of the training loop of the code in `tree` (one child process).
    CPU seconds (one thread) hold on a loaded machine, where wall seconds measure the load too."""
    import json

    overrides = [
        f"pretrain.batch_size={batch}",
        "pretrain.gradient_accumulation_steps=2",
        f"pretrain.max_seq_length={SEQ}",
        f"pretrain.max_predictions_per_seq={PRED}",
        f"pretrain.log_every_steps={log_every}",
        "pretrain.save_checkpoints_steps=1000000",
        "pretrain.num_workers=0",
        "pretrain.log_checkpoints=false",
    ]
    args = {
        "model": model_config(name),
        "files": files,
        "overrides": overrides,
        "warm": 3,
        "steps": steps,
        "threads": threads,
    }
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, "-c", LOOP, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        raise SystemExit(f"the loop in {tree} failed:\n{out.stdout[-2000:]}{out.stderr[-3000:]}")
    return float(line.split()[1]), float(line.split()[2])


def sync_suite(args, tmp: Path) -> None:
    """The training loop's step time, before/after (see the module docstring: sync), alternated, medians."""
    import statistics

    here = Path(__file__).resolve().parents[1]
    sides = (
        {"before": (Path(args.baseline), 100), "after": (here, 100)}
        if args.baseline
        else {"log every step": (here, 1), "log every 100": (here, 100)}
    )
    threads = args.threads or 1
    print(f"CPU, {threads} thread(s), seq {SEQ}, batch {args.batch} in 2 micro-batches, {args.steps} steps per run")
    for name in args.models.split(","):
        files = write_data(tmp, CONFIGS[name]["vocab_size"], 2048)
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
        for r in range(args.runs):
            for side in list(sides)[:: 1 if r % 2 == 0 else -1]:  # ABBA: the order's effect cancels out
                tree, log_every = sides[side]
                times[side].append(loop_step_s(tree, name, files, args.batch, args.steps, log_every, threads))
        a, b = sides
        for i, what in ((1, "CPU"), (0, "wall")):
            med = {k: statistics.median(t[i] for t in v) for k, v in times.items()}
            print(
                f"{name:5s} {what:4s}: "
                + " | ".join(
                    f"{k} {med[k] * 1e3:7.2f} ms/step ({', '.join(f'{t[i] * 1e3:.1f}' for t in times[k])})"
                    for k in sides
                )
                + f" | {b} / {a}: {med[b] / med[a]:.3f}"
            )


def loader_only(files: list[str], batch: int, batches: int) -> float:
    stream = data.Stream(files, 0, 1, batch_size=batch, max_seq_length=SEQ, seed=0, block=4096).batches()
    next(stream)
    t = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * batch / (time.perf_counter() - t)


def flops_per_seq(name: str, seq: int = SEQ, pred: int = PRED) -> float:
    """Model FLOPs of one training sequence (forward + backward = 3x forward; matmuls only)."""
    c = CONFIGS[name]
    h, e, i, layers, v = (
        c["hidden_size"],
        c["embedding_size"],
        c["intermediate_size"],
        c["num_hidden_layers"],
        c["vocab_size"],
    )
    per_token = 2 * (e * h + layers * (4 * h * h + 2 * h * i))  # projection + attention/FFN matmuls
    attention = layers * 2 * 2 * seq * h  # QK^T and PV, per token
    head = pred * 2 * (h * e + e * v) + 2 * (h * h + 2 * h)  # MLM on the masked positions, pooler + SOP
    return 3 * (seq * (per_token + attention) + head)


def gpu_suite(args, tmp: Path) -> None:
    """ALBERT-base on the GPU(s) found; the N-process run relaunches this script under torchrun.
    --smoke-cpu N: the same code paths on CPU with the tiny model, batch 16, N Gloo processes (no figures
    worth reading: it checks that the suite and its torchrun relaunch work where no GPU is lent)."""
    smoke = args.smoke_cpu
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: the GPU suite needs one (--smoke-cpu 2 checks its code paths on CPU)")
    name, batch = ("tiny", 16) if smoke else ("base", 512)
    device = "cpu" if smoke else "cuda"
    gpu, n_gpu = ("CPU (smoke)", smoke) if smoke else (torch.cuda.get_device_name(), torch.cuda.device_count())
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    seqs = [args.seq] if args.seq else [64, 128]
    compiles = {"both": [False, True], "on": [True], "off": [False]}[args.compile]
    if args.suite == "gpu-rank":
        from albert_exp.pretrain.ddp import Dist

        dist = Dist.init()
        files = write_data(tmp, CONFIGS[name]["vocab_size"], 4 * batch, seed=dist.rank, seq=seqs[0])
        sps = ours(name, files, batch, args.steps, str(dist.device), True, compiles[0], seqs[0], dist)
        total = dist.mean({"sps": sps})["sps"] * dist.world
        if dist.main:
            print(f"RESULT {total}")
        return
    single = {}
    for seq in seqs:
        files = write_data(tmp, CONFIGS[name]["vocab_size"], 4 * batch, seq=seq)
        for compile in compiles:
            sps = ours(name, files, batch, args.steps, device, bf16=True, compile=compile, seq=seq)
            single[seq, compile] = sps
            f = flops_per_seq(name, seq, PRED_FOR.get(seq, PRED))
            mfu = sps * f / peak if peak else float("nan")
            print(
                f"{gpu}: ALBERT-{name} seq {seq} batch {batch} bf16 compile={compile}: {sps:,.0f} seq/s, "
                f"{sps * seq:,.0f} tokens/s ({sps * seq * 0.75:,.0f} real), MFU {mfu:.1%} "
                f"({f / 1e9:.2f} GFLOP/seq, peak {peak or 0:.3g})"
            )
    if n_gpu < 2:
        print("one GPU: no 1 vs N comparison")
        return
    for (seq, compile), one in single.items():
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n_gpu}", __file__]
        cmd += ["--suite", "gpu-rank", "--seq", str(seq), "--compile", "on" if compile else "off"]
        cmd += ["--steps", str(args.steps)] + (["--smoke-cpu", str(smoke)] if smoke else [])
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "4"})
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
        if line is None:
            print(f"{n_gpu} processes seq {seq} compile={compile}: failed\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
            continue
        total = float(line.split()[1])
        print(
            f"{n_gpu} x {gpu} (DDP, batch {batch} per process): seq {seq} compile={compile}: {total:,.0f} seq/s "
            f"in all, {total / n_gpu:,.0f} per process = {total / n_gpu / one:.0%} of one process's {one:,.0f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=["cpu", "sync", "gpu", "gpu-rank"], default="cpu", help="gpu-rank: one rank")
    p.add_argument("--seq", type=int, default=0, help="gpu: one sequence length only (default: 64 and 128)")
    p.add_argument("--compile", choices=["both", "on", "off"], default="both", help="gpu: torch.compile")
    p.add_argument("--smoke-cpu", type=int, default=0, help="gpu: run its code paths on CPU with N processes")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: 1 on CPU suites, default on GPU)")
    p.add_argument("--runs", type=int, default=3, help="cpu, sync: alternated rounds (medians)")
    p.add_argument("--baseline", default="", help="sync: a tree of the code to compare with (PYTHONPATH)")
    p.add_argument("--models", default="tiny,small", help="cpu, sync: which CONFIGS")
    args = p.parse_args()
    cpu = args.suite in ("cpu", "sync")
    if args.threads or cpu:
        torch.set_num_threads(args.threads or 1)  # pinned: the same on every side
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not cpu:
            gpu_suite(args, tmp)
            return
        if args.suite == "sync":
            sync_suite(args, tmp)
            return
        cpu_suite(args, tmp)


def cpu_suite(args, tmp: Path) -> None:
    import statistics

    print(
        f"CPU, {torch.get_num_threads()} thread(s), seq {SEQ}, batch {args.batch}, {args.steps} steps, "
        f"{args.runs} alternated rounds (medians)"
    )
    for name in args.models.split(","):
        files = write_data(tmp, CONFIGS[name]["vocab_size"], 2048)
        sides = ("ours", "ours full", "HF")
        rates: dict[str, list[float]] = {k: [] for k in sides}
        run = {
            "ours": lambda name=name, files=files: ours(name, files, args.batch, args.steps),
            "ours full": lambda name=name, files=files: ours(name, files, args.batch, args.steps, full_head=True),
            "HF": lambda name=name, files=files: hf_trainer(name, files, args.batch, args.steps, tmp),
        }
        for r in range(args.runs):
            for k in sides[:: 1 if r % 2 == 0 else -1]:  # alternated, the order reversed every other round
                rates[k].append(run[k]())
        a, f, b = (statistics.median(rates[k]) for k in sides)
        print(
            f"{name:5s}: ours {a:8.1f} seq/s | ours, MLM head on every position {f:8.1f} | HF Trainer + "
            f"DataCollatorForLanguageModeling {b:8.1f} | ours / HF {a / b:.2f}x, same head work (ours full / HF) "
            f"{f / b:.2f}x, gathering the masked positions saves {1 - f / a:.0%} of ours full's time"
        )
        loader = loader_only(files, args.batch, 40)
        print(
            f"{name:5s}: loader alone {loader:8.1f} seq/s in one process = {loader / a:.1f}x what training "
            f"consumes (target >= 5x)"
        )


if __name__ == "__main__":
    main()
