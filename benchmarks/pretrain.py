"""Pretraining throughput, side by side. Prints sequences/s and ratios.

    .venv/bin/python benchmarks/pretrain.py                 # CPU: ours vs HF Trainer (tiny, small), loader vs step
    .venv/bin/python benchmarks/pretrain.py --suite gpu     # ALBERT-base, seq 64, batch 512, bf16: seq/s and MFU

* ours: albert_exp.pretrain (TFRecord stream -> AlbertForPreTraining, MLM loss on the gathered masked
  positions + SOP, LAMB, clipping), the loop's own step function.
* HF: transformers.Trainer + DataCollatorForLanguageModeling (dynamic masking, MLM logits over every
  position) on the same model class, the same token ids and batch size, AdamW (the Trainer's default).
* loader: our TFRecord stream alone (decode + collate, one process) vs what one training step consumes; the
  loader must be >= 5x faster than training so it never limits it (more worker processes scale it further).

Synthetic TFRecords with google's features are written to a temp dir; nothing is downloaded.
"""

from __future__ import annotations

import argparse
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


def write_data(root: Path, vocab: int, n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n):
        length = int(rng.integers(SEQ // 2, SEQ + 1))
        ids = np.zeros(SEQ, np.int64)
        ids[:length] = rng.integers(5, vocab, length)
        ids[0], ids[length - 1] = 2, 3
        seg = np.zeros(SEQ, np.int64)
        seg[length // 2 : length] = 1
        pos = np.sort(rng.choice(np.arange(1, length - 1), PRED, replace=False))
        examples.append(
            encode_example(
                {
                    "input_ids": ids,
                    "input_mask": (np.arange(SEQ) < length).astype(np.int64),
                    "segment_ids": seg,
                    "token_boundary": np.ones(SEQ, np.int64),
                    "masked_lm_positions": pos,
                    "masked_lm_ids": ids[pos],
                    "masked_lm_weights": np.ones(PRED, np.float32),
                    "next_sentence_labels": [int(rng.integers(0, 2))],
                }
            )
        )
    path = root / f"bench-{vocab}.tfrecord"
    write_records(path, examples)
    return [str(path)]


def build(name: str, device: str = "cpu"):
    from transformers import AlbertConfig, AlbertForPreTraining

    torch.manual_seed(0)
    cfg = AlbertConfig(
        **CONFIGS[name],
        max_position_embeddings=512,
        hidden_act="gelu_new",
        classifier_dropout_prob=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return AlbertForPreTraining(cfg).to(device)


def ours(
    name: str, files: list[str], batch: int, steps: int, device: str = "cpu", bf16: bool = False, compile: bool = False
) -> float:
    """Sequences/s of our training step, data included (in-process stream on CPU, prefetched on GPU)."""
    model = build(name, device)
    opt = optim.make_optimizer(model, 1e-3)
    encoder = torch.compile(model.albert) if compile else None
    stream = data.Stream(files, 0, 1, batch_size=batch, max_seq_length=SEQ, seed=0, block=4096).batches()
    batches = [next(stream) for _ in range(4)] if device != "cpu" else None

    def step(i: int) -> None:
        b = batches[i % len(batches)] if batches else next(stream)
        b = {k: v.to(device, non_blocking=True) for k, v in b.items() if isinstance(v, torch.Tensor)}
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss = batch_losses(model, b, encoder)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    warm = 3 if not compile else 10
    for i in range(warm):
        step(i)
    if device != "cpu":
        torch.cuda.synchronize()
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.suite == "gpu":
            if not torch.cuda.is_available():
                raise SystemExit("no CUDA device: the GPU suite needs one")
            name, batch = "base", 512
            files = write_data(tmp, CONFIGS[name]["vocab_size"], 4 * batch)
            gpu = torch.cuda.get_device_name()
            peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
            for compile in (False, True):
                sps = ours(name, files, batch, args.steps, "cuda", bf16=True, compile=compile)
                mfu = sps * flops_per_seq(name) / peak if peak else float("nan")
                print(
                    f"{gpu}: ALBERT-base seq {SEQ} batch {batch} bf16 compile={compile}: {sps:,.0f} seq/s, "
                    f"MFU {mfu:.1%} ({flops_per_seq(name) / 1e9:.2f} GFLOP/seq, peak {peak or 0:.3g})"
                )
            return
        print(f"CPU, {torch.get_num_threads()} threads, seq {SEQ}, batch {args.batch}, {args.steps} steps")
        for name in ("tiny", "small"):
            files = write_data(tmp, CONFIGS[name]["vocab_size"], 2048)
            a = ours(name, files, args.batch, args.steps)
            b = hf_trainer(name, files, args.batch, args.steps, tmp)
            print(
                f"{name:5s}: ours {a:8.1f} seq/s | HF Trainer + DataCollatorForLanguageModeling {b:8.1f} seq/s "
                f"| ratio {a / b:.2f}x"
            )
            loader = loader_only(files, args.batch, 40)
            print(
                f"{name:5s}: loader alone {loader:8.1f} seq/s in one process = {loader / a:.1f}x what training "
                f"consumes (target >= 5x)"
            )


if __name__ == "__main__":
    main()
