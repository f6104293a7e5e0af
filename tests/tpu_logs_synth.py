"""Realistic synthetic console logs of run_pretraining.py on TPU, with the ground truth they encode.

    from tests.tpu_logs_synth import SynthSpec, write_logs
    logs = write_logs(SynthSpec(num_train_steps=5000, crashes=(2300,)), "/tmp/logs")
    logs.files, logs.truth.metrics[("train/loss", 100)]

The generator knows what it wrote (values, times, restarts, checkpoints) *without* parsing anything, so tests
compare the parser against an independent truth. What a real log has, it has: absl and glog copies of each
line (in either order), TF C++ startup lines with full dates, deprecation warnings with plain continuation
lines, input-file and running-training blocks, TPU infeed/outfeed chatter, restarts that resume from the
last checkpoint (so steps overlap), tracebacks and reconnect errors, eval blocks, the end-of-training
markers, and on request binary garbage, unknown lines, a cut last line, gzip and CRLF.
"""

from __future__ import annotations

import gzip
import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path


@dataclass
class SynthSpec:
    num_train_steps: int = 5000
    log_every: int = 100  # iterations_per_loop: one loss line per loop
    checkpoint_every: int = 1000
    batch_size: int = 512
    steps_per_sec: float = 5.2
    start: datetime = datetime(2020, 4, 7, 23, 40, 1)
    crashes: tuple[int, ...] = ()  # steps where the job dies; the next attempt resumes from the last checkpoint
    restart_gap_s: float = 1800.0
    layout: str = "per_restart"  # or "single": every attempt appended to one file (`tee -a`)
    formats: str = "both"  # "both" | "absl" | "glog"
    order: str = "glog_first"  # "glog_first" | "absl_first" | "random"
    noise_per_step: int = 2  # TPU chatter lines per logged step (each printed in every format)
    target_lines: int | None = None  # pad the chatter to reach about this many lines in total
    eval_every: int | None = None  # an eval block after these checkpoints
    finish: bool = True  # the last attempt reaches num_train_steps and says so
    cpp_header: bool = True  # TF C++ startup lines (they carry the year)
    echo_command: bool = False  # the run_pretraining.py command echoed at the top of each file
    estimator_config: bool = True  # the estimator's `Using config: {...}` line (output dir, loop size, cores)
    final_eval: bool = False  # `--do_eval`: an evaluation of the last checkpoint after the end of training
    garbage: bool = False  # one binary line and one unknown line per file
    truncate_last: bool = False  # the last file ends in the middle of a loss line
    gzip: bool = False
    crlf: bool = False
    seed: int = 0
    stem: str = "pretrain"
    bucket: str = "gs://my-bucket/albert"


@dataclass
class Truth:
    metrics: dict[tuple[str, int], float] = field(default_factory=dict)
    times: dict[tuple[str, int], datetime] = field(default_factory=dict)
    overlaps: dict[tuple[str, int], float] = field(default_factory=dict)  # values a re-run step superseded
    checkpoints: dict[int, str] = field(default_factory=dict)
    restart_steps: list[int] = field(default_factory=list)
    finished: bool = False
    start_time: datetime | None = None
    end_time: datetime | None = None
    input_files: list[str] = field(default_factory=list)
    garbage_lines: int = 0
    lines: int = 0
    command: str = ""


@dataclass
class SynthLogs:
    files: list[Path]
    truth: Truth


NOISE = (
    "Enqueue next ({n}) batch(es) of data to infeed.",
    "Dequeue next ({n}) batch(es) of data from outfeed.",
    "Outfeed finished for iteration ({i}, {j})",
    "TPUPollingThread found TPU b'my-tpu' in state READY, and health HEALTHY.",
)


class _Writer:
    """Formats messages as the TPU job prints them and remembers the truth."""

    def __init__(self, spec: SynthSpec, rng: random.Random, truth: Truth):
        self.spec, self.rng, self.truth = spec, rng, truth
        self.lines: list[str] = []

    def log(self, t: datetime, msg: str, *, level: str = "I", where: str = "tpu_estimator.py:2307") -> None:
        glog = f"{level}{t:%m%d %H:%M:%S}.{t.microsecond:06d} 140213 {where}] {msg}"
        absl = f"{dict(I='INFO', W='WARNING', E='ERROR')[level]}:tensorflow:{msg}"
        fmt = self.spec.formats
        pair = [glog, absl] if fmt == "both" else [glog] if fmt == "glog" else [absl]
        if fmt == "both" and (
            self.spec.order == "absl_first" or (self.spec.order == "random" and self.rng.random() < 0.5)
        ):
            pair.reverse()
        self.lines.extend(pair)
        self._seen(t)

    def plain(self, text: str) -> None:
        self.lines.append(text)

    def cpp(self, t: datetime, msg: str) -> None:
        self.lines.append(f"{t:%Y-%m-%d %H:%M:%S}.{t.microsecond:06d}: I {msg}")
        self._seen(t)

    def _seen(self, t: datetime) -> None:
        self.truth.start_time = min(self.truth.start_time or t, t)
        self.truth.end_time = max(self.truth.end_time or t, t)

    def point(self, metric: str, step: int, value: float, t: datetime) -> None:
        # A step an earlier attempt logged takes the re-run's value (tables.OVERLAP_RULE: the latest attempt's);
        # the superseded one is kept apart so tests can check what is reported as superseded.
        if (metric, step) in self.truth.metrics:
            self.truth.overlaps[(metric, step)] = self.truth.metrics[(metric, step)]
        self.truth.metrics[(metric, step)] = value
        self.truth.times[(metric, step)] = t


def _num(x: float) -> str:
    return f"{x:.7g}"


def command_line(spec: SynthSpec) -> str:
    return (
        f"python3 -m albert.run_pretraining --input_file={spec.bucket}/data/*.tfrecord "
        f"--output_dir={spec.bucket}/out --albert_config_file={spec.bucket}/albert_config.json "
        f"--do_train --train_batch_size={spec.batch_size} --learning_rate=0.00022 "
        f"--num_train_steps={spec.num_train_steps} --num_warmup_steps=25000 --max_seq_length=64 "
        f"--save_checkpoints_steps={spec.checkpoint_every} --use_tpu --tpu_name=my-tpu"
    )


def _attempt(w: _Writer, spec: SynthSpec, t: datetime, first: int, last: int, crashed: bool, noise_k: int) -> datetime:
    rng, truth = w.rng, w.truth
    if spec.echo_command:
        w.plain(f"+ {command_line(spec)}")
    if spec.cpp_header:
        w.cpp(
            t,
            "tensorflow/core/platform/cpu_feature_guard.cc:142] Your CPU supports instructions that this "
            "TensorFlow binary was not compiled to use: AVX2 FMA",
        )
    t += timedelta(seconds=2.5)
    w.log(
        t,
        "From run_pretraining.py:510: The name tf.gfile.Glob is deprecated.",
        level="W",
        where="module_wrapper.py:139",
    )
    w.plain("Instructions for updating:")
    w.plain("Use tf.io.gfile.glob instead.")
    w.log(t, "*** Input Files ***", where="run_pretraining.py:475")
    for name in truth.input_files:
        w.log(t, f"  {name}", where="run_pretraining.py:477")
    w.log(
        t,
        "Querying Tensorflow master (grpc://10.240.1.2:8470) for TPU system metadata.",
        where="tpu_system_metadata.py:78",
    )
    w.log(t, "*** Num TPU Cores: 8", where="tpu_system_metadata.py:148")
    if spec.estimator_config:
        w.log(
            t,
            f"Using config: {{'_model_dir': '{spec.bucket}/out', '_tf_random_seed': None, "
            f"'_save_summary_steps': 100, '_save_checkpoints_steps': {spec.checkpoint_every}, "
            f"'_keep_checkpoint_max': 5, '_tpu_config': TPUConfig(iterations_per_loop={spec.log_every}, "
            "num_shards=8, num_cores_per_replica=None, per_host_input_for_training=3)}",
            where="estimator.py:212",
        )
    w.log(t, "***** Running training *****", where="run_pretraining.py:511")
    w.log(t, f"  Batch size = {spec.batch_size}", where="run_pretraining.py:512")
    if first:
        w.log(t, f"Restoring parameters from {spec.bucket}/out/model.ckpt-{first}", where="saver.py:1284")
    t += timedelta(seconds=40 + rng.random() * 20)
    w.log(
        t, f"Saving checkpoints for {first} into {spec.bucket}/out/model.ckpt.", where="basic_session_run_hooks.py:606"
    )
    truth.checkpoints[first] = f"{spec.bucket}/out/model.ckpt-{first}"
    loop = 0
    for step in range(first + spec.log_every, last + 1, spec.log_every):
        loop += 1
        dt = spec.log_every / (spec.steps_per_sec * (1 + rng.uniform(-0.03, 0.03)))
        for k in range(noise_k):
            msg = NOISE[k % len(NOISE)].format(n=spec.log_every, i=loop, j=k)
            w.log(t + timedelta(seconds=dt * (k + 1) / (noise_k + 1)), msg, where="tpu_estimator.py:600")
        t += timedelta(seconds=dt)
        loss = 1.8 + 2.4 * math.exp(-step / (0.15 * spec.num_train_steps)) + rng.gauss(0, 0.03)
        loss_s = _num(loss)
        if loop == 1:  # the first loss line of an attempt has no timing and no rate lines follow it
            w.log(t, f"loss = {loss_s}, step = {step}", where="basic_session_run_hooks.py:262")
            w.point("train/loss", step, float(loss_s), t)
        else:
            w.log(t, f"loss = {loss_s}, step = {step} ({dt:.3f} sec)", where="basic_session_run_hooks.py:260")
            w.point("train/loss", step, float(loss_s), t)
            gsps = _num(spec.log_every / dt)
            eps = _num(spec.log_every / dt * spec.batch_size)
            t2 = t + timedelta(microseconds=700)
            w.log(t2, f"global_step/sec: {gsps}", where="tpu_estimator.py:2307")
            w.point("train/global_step_per_s", step, float(gsps), t2)
            w.log(t2, f"examples/sec: {eps}", where="tpu_estimator.py:2308")
            w.point("train/examples_per_s", step, float(eps), t2)
        if step % spec.checkpoint_every == 0:
            t += timedelta(seconds=3)
            w.log(
                t,
                f"Saving checkpoints for {step} into {spec.bucket}/out/model.ckpt.",
                where="basic_session_run_hooks.py:606",
            )
            truth.checkpoints[step] = f"{spec.bucket}/out/model.ckpt-{step}"
            if spec.eval_every and step % spec.eval_every == 0:
                t += timedelta(seconds=20)
                w.log(t, "***** Eval results *****", where="run_pretraining.py:563")
                values = {
                    "global_step": str(step),
                    "loss": _num(loss + 0.1),
                    "masked_lm_accuracy": _num(min(0.9, 0.3 + step / spec.num_train_steps / 2)),
                    "masked_lm_loss": _num(loss - 0.2),
                    "sentence_order_accuracy": _num(0.9),
                    "sentence_order_loss": _num(0.25),
                }
                for key in sorted(values):
                    w.log(t, f"  {key} = {values[key]}", where="run_pretraining.py:566")
                    if key != "global_step":
                        w.point(f"eval/{key}", step, float(values[key]), t)
    if crashed:
        t += timedelta(seconds=30)
        w.log(t, "Error recorded from outfeed: Socket closed", level="E", where="error_handling.py:75")
        w.log(
            t,
            "An error was raised. This may be due to a preemption in a connected worker or parameter "
            "server. The current session will be closed and a new session will be created.",
            level="W",
            where="monitored_session.py:1286",
        )
        w.plain("Traceback (most recent call last):")
        w.plain('  File "run_pretraining.py", line 578, in <module>')
        w.plain("    tf.app.run()")
        w.plain("tensorflow.python.framework.errors_impl.UnavailableError: Socket closed")
    else:
        t += timedelta(seconds=5)
        w.log(
            t,
            f"Saving checkpoints for {last} into {spec.bucket}/out/model.ckpt.",
            where="basic_session_run_hooks.py:606",
        )
        truth.checkpoints[last] = f"{spec.bucket}/out/model.ckpt-{last}"
        w.log(t, f"Loss for final step: {_num(loss)}.", where="estimator.py:371")
        w.log(t, "training_loop marked as finished", where="error_handling.py:101")
        w.log(t, "Shutdown TPU system.", where="tpu_estimator.py:600")
        if spec.final_eval:
            t = _final_eval(w, spec, t, last, loss)
    return t


def _final_eval(w: _Writer, spec: SynthSpec, t: datetime, step: int, loss: float) -> datetime:
    """What run_pretraining.py --do_eval prints after training: one evaluation of the last checkpoint."""
    w.log(t, "***** Running evaluation *****", where="run_pretraining.py:540")
    w.log(t, "  Batch size = 8", where="run_pretraining.py:541")
    t += timedelta(seconds=75)  # compiling the eval graph
    w.log(t, f"Starting evaluation at {t:%Y-%m-%dT%H:%M:%S}Z", where="evaluation.py:255")
    t += timedelta(seconds=30)
    w.log(t, f"Finished evaluation at {t:%Y-%m-%d-%H:%M:%S}", where="evaluation.py:275")
    values = {
        "global_step": str(step),
        "loss": _num(loss + 0.05),
        "masked_lm_accuracy": _num(0.61),
        "masked_lm_loss": _num(loss - 0.25),
        "sentence_order_accuracy": _num(0.93),
        "sentence_order_loss": _num(0.2),
    }
    w.log(t, "***** Eval results *****", where="run_pretraining.py:556")
    for n, key in enumerate(sorted(values)):
        w.log(t, f"  {key} = {values[key]}", where="run_pretraining.py:559")
        if key != "global_step":
            w.point(f"eval/{key}", step, float(values[key]), t)
        if n == 0:  # the first result beats best_perf = 0: the checkpoint is copied as the best one
            for ext in ("meta", "data-00000-of-00001", "index"):
                w.log(t, f"saving {spec.bucket}/out/model.ckpt-{step}.{ext} to {spec.bucket}/out/model.ckpt-best.{ext}")
    return t


def write_logs(spec: SynthSpec, out_dir: str | Path) -> SynthLogs:
    """Write the log files of `spec` into out_dir; returns them with the truth they encode."""
    rng = random.Random(spec.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truth = Truth(
        input_files=[f"{spec.bucket}/data/tf_examples.tfrecord-{i:05d}-of-00004" for i in range(4)],
        command=command_line(spec),
    )
    copies = 2 if spec.formats == "both" else 1
    overlap = sum(c - c // spec.checkpoint_every * spec.checkpoint_every for c in spec.crashes)
    n_logged = (spec.num_train_steps + overlap) // spec.log_every
    noise_k = spec.noise_per_step
    if spec.target_lines:
        noise_k = max(0, round(spec.target_lines / max(1, n_logged) / copies - 3))
    ends = [*spec.crashes, spec.num_train_steps]
    first, t = 0, spec.start
    writers: list[_Writer] = []
    for n, end in enumerate(ends):
        crashed = n < len(spec.crashes) or not spec.finish
        if n > 0:
            truth.restart_steps.append(first + spec.log_every)
        if spec.layout == "per_restart" or not writers:
            writers.append(_Writer(spec, rng, truth))
        t = _attempt(writers[-1], spec, t, first, end, crashed, noise_k)
        first = end // spec.checkpoint_every * spec.checkpoint_every
        t += timedelta(seconds=spec.restart_gap_s)
    truth.finished = spec.finish
    files = []
    for n, w in enumerate(writers):
        if spec.garbage:
            i = len(w.lines) // 2
            w.lines.insert(i, "\x00\x9f\x92garbage\xff\xfe after a disk hiccup")
            w.lines.insert(i + 1, "<<< tpu-vm: unexpected console output >>>")
            truth.garbage_lines += 2
        name = f"{spec.stem}-{n}.log" + (".gz" if spec.gzip else "")
        path = out / name
        nl = "\r\n" if spec.crlf else "\n"
        text = nl.join(w.lines) + nl
        if spec.truncate_last and n == len(writers) - 1:
            # Preempted while printing: "step = 5100" cut to "step = 51" would be a wrong point if parsed.
            t = truth.end_time + timedelta(seconds=1)
            step = str(spec.num_train_steps + spec.log_every)
            text += (
                f"I{t:%m%d %H:%M:%S}.{t.microsecond:06d} 140213 basic_session_run_hooks.py:260] "
                f"loss = 1.95, step = {step[:-2]}"
            )
        data = text.encode("utf-8", errors="surrogateescape")
        path.write_bytes(gzip.compress(data, mtime=0) if spec.gzip else data)
        truth.lines += len(w.lines)
        files.append(path)
    return SynthLogs(files, truth)
