"""The pretraining loop: one model, one loop, parameterised; resumable to the exact step.

Metrics are buffered and committed together with each checkpoint (to MLflow and metrics.jsonl): a run
killed between two checkpoints loses nothing that the resumed run does not recompute identically, and no
step is ever logged twice.

Host syncs: a step's losses stay on the device (one small tensor per step) until the next log step, eval step
or checkpoint, where they come to the host together (one all-reduce over ranks, one copy): on a GPU a
`.item()` per loss per micro-batch would stall the stream every step. What needs the host's numbers waits for
that point: the train/ means, the plateau check (fed every step's loss, in order) and the check for a
non-finite loss (naming the first such step; no checkpoint is written after it). So a plateau or a non-finite
loss stops the run at the first log step (or checkpoint) at or after the step where it happened.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from albert_exp import checkpoint
from albert_exp.errors import UserError
from albert_exp.pretrain import data
from albert_exp.pretrain.ddp import Dist
from albert_exp.pretrain.optim import Plateau

METRICS = ("loss", "mlm_loss", "sop_loss", "mlm_accuracy", "sop_accuracy")
FLUSHED = checkpoint.FLUSHED


class Share(NamedTuple):
    """The denominators that make a micro-batch's losses its share of one optimiser step's global batch.

    The one normalisation of both paths (one process accumulating micro-batches, N ranks under DDP): the
    shares of a step's micro-batches, summed on each rank and averaged over ranks (what DDP does to the
    gradients and Dist.mean to the logged values), are the global batch's means, whatever its split into
    ranks x micro-batches. So each denominator is the global batch's count divided by the world size: with
    masked positions counted per rank instead (different numbers of masks per rank), N ranks would not compute
    what one process computes. Float64 scalars: the division happens in the loss's dtype, as with a float."""

    mlm: torch.Tensor  # (masked positions, i.e. the sum of mlm_weights, of the global batch + 1e-5) / world
    seqs: float  # sequences of the global batch / world (all micro-batches are the same size)

    @classmethod
    def of(cls, weights: torch.Tensor, seqs: int, world: int = 1) -> Share:
        """`weights`: the global batch's summed mlm_weights (a float64 scalar); google's normalisation
        (sum of weighted losses / (sum of weights + 1e-5)), divided by the world size (exact for 2, 4, 8...)."""
        return cls((weights + 1e-5) / world, seqs / world)


def batch_losses(model, batch: dict[str, torch.Tensor], encoder=None, share: Share | None = None) -> dict:
    """MLM loss over the masked positions only (gathered before the vocabulary projection, as google's
    run_pretraining.py does: 10 positions instead of 64 per sequence) + SOP loss; accuracies.
    `encoder`: a torch.compile'd `model.albert` (the model itself stays uncompiled, so it saves plainly).
    `share`: this micro-batch's share of a global batch (see Share); None: the means over this batch alone."""
    out = (encoder or model.albert)(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"]
    )
    seq = out.last_hidden_state
    pos = batch["mlm_positions"]
    gathered = seq.gather(1, pos.unsqueeze(-1).expand(-1, -1, seq.size(-1)))
    logits = model.predictions(gathered).float()
    ids, w = batch["mlm_ids"], batch["mlm_weights"]
    sop = batch["sop_labels"]
    share = share or Share.of(w.sum(dtype=torch.float64), len(sop))
    ce = F.cross_entropy(logits.flatten(0, 1), ids.flatten(), reduction="none").view_as(w)
    mlm_loss = (ce * w).sum() / share.mlm
    sop_logits = model.sop_classifier(out.pooler_output).float()
    sop_loss = F.cross_entropy(sop_logits, sop, reduction="sum") / share.seqs
    with torch.no_grad():
        mlm_acc = ((logits.argmax(-1) == ids).float() * w).sum() / share.mlm
        sop_acc = (sop_logits.argmax(-1) == sop).float().sum() / share.seqs
    return {
        "loss": mlm_loss + sop_loss,
        "mlm_loss": mlm_loss,
        "sop_loss": sop_loss,
        "mlm_accuracy": mlm_acc,
        "sop_accuracy": sop_acc,
    }


def _stacked(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """The METRICS of batch_losses as one float64 vector, on their device (no host sync)."""
    return torch.stack([losses[k].detach() for k in METRICS]).double()


@dataclass
class State:
    """Everything besides tensors that a checkpoint must restore."""

    step: int = 0
    batches_done: int = 0  # micro-batches consumed (sets the loader's round-robin phase)
    positions: list = field(default_factory=list)
    corrupt: list = field(default_factory=list)
    window: dict = field(default_factory=lambda: {"n": 0, **{k: 0.0 for k in METRICS}})
    plateau: dict = field(default_factory=dict)
    last_eval_loss: float | None = None
    best: dict = field(default_factory=dict)  # {"step", "loss", "metric"}
    stop_reason: str | None = None


class Trainer:
    def __init__(
        self,
        model,
        optimizer,
        scheduler,
        *,
        pc,
        files: list[str],
        eval_data: list[dict],
        output_dir: Path,
        tracker,
        seed: int,
        total_steps: int,
        device: torch.device,
        state: State,
        plateau: Plateau,
        extra_state: dict,
        compile: bool = False,
        dist=None,
    ):
        self.model, self.opt, self.sched, self.pc = model, optimizer, scheduler, pc
        self.files, self.eval_data, self.out, self.tracker = files, eval_data, output_dir, tracker
        self.seed, self.total, self.device, self.state, self.plateau = seed, total_steps, device, state, plateau
        self.extra_state = extra_state
        self.encoder = torch.compile(model.albert) if compile else None
        self.streams = max(1, pc.num_workers)
        self.dist = dist or Dist()  # torchrun: this rank's share of the global batch, gradients through DDP
        self.micro = pc.batch_size // (pc.gradient_accumulation_steps * self.dist.world)
        self.forward, self.no_sync = self.dist.wrap(model, batch_losses, self.encoder)
        self.static = data.dynamic_manifest(files) is None
        self.pending: list[tuple[int, dict]] = []
        self.unsynced: list[tuple[int, torch.Tensor]] = []  # (step, its losses on the device) since the last sync
        bf16 = pc.precision == "bf16" or (pc.precision == "auto" and device.type == "cuda")
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        self.precision = "bf16" if bf16 else "fp32"
        self.vocab_size = model.config.vocab_size
        if not state.positions:
            state.positions = [None] * self.streams
            state.corrupt = [0] * self.streams

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        sums = torch.zeros(len(METRICS), dtype=torch.float64, device=self.device)
        with torch.no_grad(), self.autocast():
            for batch in self.eval_data:
                sums += _stacked(batch_losses(self.model, self._to_device(batch), self.encoder))
        self.model.train()
        return {f"eval/{k}": v / len(self.eval_data) for k, v in zip(METRICS, sums.tolist(), strict=True)}

    def _commit(self, step: int) -> Path:
        """Checkpoint (with the metrics buffered since the last one), then flush those metrics, then prune."""
        st = self.state
        metric = st.last_eval_loss if st.last_eval_loss is not None else self.plateau.ema
        is_best = metric is not None and (not st.best or metric < st.best["loss"])
        if is_best:
            st.best = {
                "step": step,
                "loss": metric,
                "metric": "eval/loss" if st.last_eval_loss is not None else "smoothed train/loss",
            }
        st.plateau = self.plateau.state_dict()
        trainer_state = {
            **st.__dict__,
            **self.extra_state,
            "streams": self.streams,
            "micro_batch": self.micro,
            "pending_metrics": self.pending,
        }
        ckpt = checkpoint.save(self.out, step, self.model, self.opt, self.sched, trainer_state)
        self.flush(ckpt, self.pending)
        self.pending = []
        if is_best:
            checkpoint.update_best(self.out, ckpt)
        if self.pc.log_checkpoints:
            for f in ckpt.iterdir():
                if f.name not in ("training_state.pt", FLUSHED):
                    self.tracker.log_artifact(f, f"checkpoints/{ckpt.name}")
        checkpoint.prune(self.out, self.pc.keep_checkpoints, st.best.get("step"))
        return ckpt

    def flush(self, ckpt: Path, pending: list, resuming: bool = False) -> None:
        """Write the metrics a checkpoint carries to metrics.jsonl and the tracker, once.

        The metrics travel inside the (atomically renamed) checkpoint and a marker file records the flush,
        so a kill at any point neither loses nor duplicates a step: on resume an unflushed checkpoint is
        flushed again, skipping what already reached MLflow, and metrics.jsonl is cut back to it."""
        if resuming:
            upto = int(ckpt.name.split("-")[1])
            path = self.out / "metrics.jsonl"
            rows = path.read_text().splitlines() if path.exists() else []
            again = {s for s, _ in pending} if not (ckpt / FLUSHED).exists() else set()
            kept = [r for r in rows if (s := json.loads(r)["step"]) <= upto and s not in again]
            path.write_text("".join(r + "\n" for r in kept))
            if (ckpt / FLUSHED).exists():
                return
        logged = self._already_logged(pending) if resuming else set()
        with open(self.out / "metrics.jsonl", "a") as f:
            for s, m in pending:
                f.write(json.dumps({"step": s, **m}) + "\n")
        fresh = [(s, {k: v for k, v in m.items() if (k, s) not in logged}) for s, m in pending]
        self.tracker.log_history([(s, m) for s, m in fresh if m])  # one batched write, not one per step
        (ckpt / FLUSHED).touch()

    def _already_logged(self, pending: list) -> set[tuple[str, int]]:
        return self.tracker.logged_steps({k for _, m in pending for k in m}) if pending else set()

    def _loader(self):
        st, pc = self.state, self.pc
        return data.make_loader(
            self.files,
            streams=self.streams,
            positions=st.positions,
            batches_done=st.batches_done,
            batch_size=self.micro,
            max_seq_length=pc.max_seq_length,
            seed=self.seed,
            block=pc.shuffle_block,
            skip_corrupt=pc.skip_corrupt,
        )

    def _share(self, micro: list[dict]) -> Share:
        """The step's denominators (Share): masked positions summed over this rank's micro-batches (already on
        the device: no host sync) and over ranks, in one all-reduce of one scalar per step."""
        weights = torch.stack([b["mlm_weights"].sum(dtype=torch.float64) for b in micro]).sum()
        return Share.of(self.dist.sum(weights), self.pc.batch_size, self.dist.world)  # batch_size: the global one

    def _batch(self, it) -> tuple[torch.Tensor, dict, int]:
        """One optimiser step's batch as gradient_accumulation_steps micro-batches, forward and backward (one
        all-reduce). Returns this rank's shares of the global batch's mean losses (METRICS, float64, on the
        device: see _sync), the last micro-batch's stream meta and the number of sequences (over all ranks);
        the stream positions advance in the trainer state."""
        st = self.state
        sums = torch.zeros(len(METRICS), dtype=torch.float64, device=self.device)
        micro = []  # the whole batch first: the losses are normalised by all of its masked positions
        for _ in range(self.pc.gradient_accumulation_steps):
            batch = next(it)
            data.raise_if_error(batch)
            meta = batch.pop("meta")
            if int(batch["input_ids"].max()) >= self.vocab_size:  # else: an opaque index error
                raise UserError(
                    f"token id {int(batch['input_ids'].max())} >= the model's vocab_size {self.vocab_size}",
                    where=f"stream {meta['stream']} at {meta['position']}",
                    fix="pretrain with the tokenizer the TFRecords were made with (model.vocab_size / init_from)",
                )
            st.positions[meta["stream"]] = meta["position"]
            st.corrupt[meta["stream"]] = meta["corrupt"]
            st.batches_done += 1
            micro.append(self._to_device(batch))
        share = self._share(micro)
        for i, batch in enumerate(micro):
            with self.no_sync(i < len(micro) - 1):  # all-reduce once per step
                with self.autocast():
                    losses = self.forward(batch, share)
                losses["loss"].backward()  # this micro-batch's share of the batch's loss
            sums += _stacked(losses)
        return sums, meta, self.pc.batch_size

    def _sync(self) -> None:
        """The losses of the steps since the last sync, to the host at once (one all-reduce: the global batch's
        means, the same on every rank): into the train/ window, through the plateau check, in step order."""
        st = self.state
        if not self.unsynced:
            return
        steps = [s for s, _ in self.unsynced]
        rows = self.dist.mean_tensor(torch.stack([v for _, v in self.unsynced])).tolist()
        self.unsynced = []
        for step, row in zip(steps, rows, strict=True):
            values = dict(zip(METRICS, row, strict=True))
            if not math.isfinite(values["loss"]):
                raise FloatingPointError(f"loss is {values['loss']} at step {step}")
            st.window["n"] += 1
            for k in METRICS:
                st.window[k] += values[k]
            reason = self.plateau.update(step, values["loss"])
            st.stop_reason = st.stop_reason or reason

    def _close_window(self, lr: float, meta: dict, elapsed: float, seqs: int) -> dict[str, float]:
        """The train/ metrics of the steps since the last log line (their means), queued for the next checkpoint."""
        st = self.state
        n = st.window.pop("n")
        m = {f"train/{k}": st.window[k] / n for k in METRICS}
        m.update(
            {
                "train/lr": lr,
                "train/seq_per_s": seqs / elapsed if elapsed else 0.0,
                # skipped records (skip_corrupt), only once there are any: a flat zero would be the run page's
                # first chart (MLflow orders chart sections by name); results.json always has the count
                **({"data/corrupt_records": float(sum(st.corrupt))} if any(st.corrupt) else {}),
                **({"data/epoch": float(meta["epoch"])} if "epoch" in meta else {}),  # dynamic data
            }
        )
        self.pending.append((st.step, m))
        st.window = {"n": 0, **{k: 0.0 for k in METRICS}}
        return m

    def train(self, last_step: int) -> dict:
        st, pc = self.state, self.pc
        it = iter(self._loader())
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.model.train()
        t0, seqs = time.perf_counter(), 0
        bar = tqdm(
            total=last_step,
            initial=st.step,
            desc="pretrain",
            unit="step",
            mininterval=2,
            leave=False,
            disable=not self.dist.main,
        )
        ckpt = None
        try:
            while st.step < last_step and st.stop_reason is None:
                lr = self.opt.param_groups[0]["lr"]
                losses, meta, n_seqs = self._batch(it)
                seqs += n_seqs
                torch.nn.utils.clip_grad_norm_(params, pc.max_grad_norm)
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
                st.step += 1
                bar.update(1)
                self.unsynced.append((st.step, losses))
                log = st.step % pc.log_every_steps == 0 or st.step == last_step
                save = st.step % pc.save_checkpoints_steps == 0 or st.step == last_step
                if log or save:  # a checkpoint holds every step's numbers: it syncs too
                    self._sync()
                if log or st.stop_reason:
                    m = self._close_window(lr, meta, time.perf_counter() - t0, seqs)
                    bar.set_postfix(loss=f"{m['train/loss']:.3f}", lr=f"{lr:.2e}")
                    t0, seqs = time.perf_counter(), 0
                if self.eval_data and (st.step % pc.eval_every_steps == 0 or st.step == last_step):
                    ev = self.evaluate()
                    st.last_eval_loss = ev["eval/loss"]
                    self.pending.append((st.step, ev))
                if save or st.stop_reason:
                    st.positions, st.corrupt = self.dist.gather_streams(st.positions, st.corrupt, self.static)
                    if self.dist.main:  # rank 0 alone checkpoints and logs
                        ckpt = self._commit(st.step)
        finally:
            bar.close()
            del it  # stops the loader processes
        if st.stop_reason:
            self.tracker.set_tags({"stop_reason": st.stop_reason, "stop_step": st.step})
        return {
            "step": st.step,
            # rank 0 only: latest() clears unfinished saves, which on another rank would race rank 0's save
            "last_checkpoint": str(ckpt or checkpoint.latest(self.out)) if self.dist.main else None,
            "stop_reason": st.stop_reason,
            "best": st.best,
            "corrupt_records": sum(st.corrupt),
            "precision": self.precision,
        }
