"""pretraining-data vs google-research/albert's create_pretraining_data.py, side by side on real text.

    .venv/bin/python benchmarks/pretraining_data.py --fortunes --lines 20000
    .venv/bin/python benchmarks/pretraining_data.py --toy --pairings "" --loaders   # the loaders alone (~1 min)
    .venv/bin/python benchmarks/pretraining_data.py --input corpus.txt --lines 40000 \\
        --reference-repo /tmp/ref/albert --reference-python /tmp/refvenv/bin/python

The corpus: --input (ALBERT's format: one sentence per line, blank line between documents) or --fortunes
(Debian's `fortunes` package: each fortune a document, each line a sentence), cut at a document boundary
after --lines lines. A SentencePiece vocabulary is trained on it (albert_exp.vocab). Both sides then run with
max_seq_length 64, max_predictions_per_seq 10, dupe_factor 40, masked_lm_prob 0.15, short_seq_prob 0.1, in
a child process each, one shard / one process: lines per CPU-second (user + sys of the child, so the figure
is per core and does not depend on other load), wall time, peak RSS, output bytes per line, records, SOP
label balance. The reference runs unmodified as `python -m albert.create_pretraining_data` from the parent
of --reference-repo (a checkout in a folder named `albert`), in an environment with TensorFlow,
tensorflow-hub, sentencepiece and six (--reference-python). Its console output is counted, not kept.

Measured 2026-11-26 on this 2-core machine class (idle but for the benchmark), 20,006 fortune lines (25%
one-sentence documents), 8,000-piece vocabulary, final code (compiled kernels, commit "tfrecord_encode:
branch-free varint sizes..."). Per core = input lines / child CPU-seconds, interpreter start and imports
included (about 1.1 s of ours: 0.5 s of imports, 0.5 s to load the cached kernels, which a 20k-line run
cannot amortise; a 1M-line shard does):
    --lines 20000 --compress --reference-repo /tmp/ref/albert --reference-python /tmp/refvenv/bin/python
    ours        4,790-5,519 lines/s/core   266 MB peak   8,160 B/line               SOP=1 49.5%   (3 runs)
    ours gzip   4,445-4,838 lines/s/core   266 MB peak   1,712 B/line
    google           45 lines/s/core     1,048 MB peak   8,212 B/line  84 MB of console  SOP=1 63.5%
    ratio       106x-123x (137x in the run beside google, on the first compiled version); same records/line
    --lines 20000 --repeat 50: a 1,000,300-line shard (the fortunes 50 times), one process
    ours        10,413-11,225 lines/s/core: 89-96 CPU-s = 1.5-1.6 min on one core, 90-98 s wall, 286-290 MB
                peak, 8.2 GB (2 runs)
    ours gzip    7,087 lines/s/core: 141 CPU-s = 2.35 min, 289 MB peak, 1.7 GB (GZIP level 1 costs 45 CPU-s)
About 20 s of the 89 are the kernel's sys time for writing 8.2 GB (dd writes 8 GB here in 34 s of sys time).
Before the compiled kernels (numpy throughout): 163 CPU-s for the 1M-line shard, 6,355 lines/s/core at 20k.
(The figures above are of format 3, i.e. today's `pairing: split`.)

Pairing modes and instance fill (format 4), measured 2026-12-02 on the same 2-core machine shared with four
other sessions (CPU seconds hold; wall times do not), 20,006 fortune lines, google's script (commit b772393,
unmodified; a tensorflow_hub.py shim on --reference-pythonpath because its tokenization.py imports the
package and the venv lacks it; TF 2.21) beside ours:
    --lines 20000 --dynamic --reference-repo /tmp/scale_ref/albert --reference-python .venv/bin/python \
        --reference-pythonpath /tmp/scale_ref/shim
                 lines/s/core  records  B/line  SOP=1  tok/inst  mask/inst  seg<=2
    ours (pack)        8,676   225,980   6,198  50.0%    44.01      6.73     4.8%
    ours split         8,878   300,043   8,160  49.8%    34.40      5.24    14.6%
    ours google        8,243   300,176   8,199  63.5%    39.44      5.99     2.2%
    ours pack gzip     7,544   225,980   1,457   (--compress, another run: 0.235 of the plain bytes)
    google                82   300,585   8,210  63.4%    39.43      5.99     2.2%    (106x fewer lines/CPU-s)
pack fills instances 1.116x as well as google's script (real tokens per instance; 1.12x the masked
predictions per instance, i.e. per unit of training compute) with balanced SOP labels; it makes 25% fewer
instances per pass over the corpus (short documents are packed), so per pass it has 15% fewer masked
predictions. `google` reproduces google's script (tokens, labels, records to 0.2%).
Dynamic mode on the same corpus: 29.8 B/line stored (208x less than static dupe 40).
    --lines 20000 --repeat 50 --pairings pack --dynamic      (1,000,300 lines, measured, machine loaded ~8)
    static (pack) dupe 40   20,896 lines/s/core: 48 CPU-s, 6.18 GB, 11.27M records, 248 MB peak
    dynamic                129,968 lines/s/core:  7.7 CPU-s, 29.8 MB (tokens once, uint16 + offsets)
    dynamic loader         350,000-410,000 samples per CPU-second in one process (400 micro-batches of 512
                           across ~36 blocks, block planning included; 2 runs), i.e. one core makes ~35-40x
                           the 10,000 seq/s assumed for ALBERT-base on one H100-class GPU (the issue's goal
                           for one GPU, seq 64, bf16); 12 cores per GPU (a DGX H100 has 14) ~400x.
The loader figure excludes the DataLoader's hand-over of tensors between processes (shared memory, ~1 MB
per micro-batch), which this 2-core machine under load cannot measure cleanly.

--loaders: both pretrain loaders at seq 64 and 128 (google's 10 / 20 predictions), micro-batch 512, one
process each, samples per CPU-second (median of --loader-runs alternated runs): the static TFRecord stream
with its compiled reader (tfrecord.decode_batch), the same stream with the reader before it (decode_example
per record + to_batch: what it read before 2026-12-07), and the dynamic loader; then how many loader
workers (processes, one core each) one GPU needs: ALBERT-base at 10,000 seq/s (seq 64) and 3,000 seq/s
(seq 128). Static data: ours, dupe_factor 5, on the same corpus; and 20,000 synthetic records whose ids
spread over 30,000 pieces (ALBERT-base's vocabulary: 2-3 byte varints, the reader's heavier case).
    --toy --lines 20000 --pairings "" --loaders   (2026-12-07, 2-core machine shared with 4 other sessions,
        load average 3.4-5.1: CPU-seconds hold, wall times do not; 3 min 13 s wall in all)
                                        seq 64              seq 128      samples per CPU-second, median of 3
    static, reader before               18,416              16,147
    static, compiled reader            267,506 (14.5x)     237,562 (14.7x)
      ids over 30,000 pieces: before    15,312              16,177
      compiled                         230,971 (15.1x)     199,681 (12.3x)
    dynamic                            432,419             330,223
    One GPU (10,000 seq/s at seq 64, 3,000 at seq 128) needs one loader worker with either loader: the
    compiled reader uses 0.04 / 0.02 of a core for it, the reader before used 0.54-0.65 / 0.19 (in-process
    figures: the DataLoader's hand-over between processes comes on top, see above).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FORTUNES = Path("/usr/share/games/fortunes")
SETTINGS = {
    "max_seq_length": 64,
    "max_predictions_per_seq": 10,
    "dupe_factor": 40,
    "masked_lm_prob": 0.15,
    "short_seq_prob": 0.1,
}


def fortunes_documents() -> list[list[str]]:
    if not FORTUNES.is_dir():
        sys.exit(f"{FORTUNES} not found: apt-get install fortunes, or give --input")
    docs: list[list[str]] = []
    for f in sorted(FORTUNES.iterdir()):
        if f.suffix or f.is_symlink() or not f.is_file():
            continue
        doc: list[str] = []
        for raw in f.read_text(encoding="utf-8", errors="replace").splitlines():
            line = "".join(ch for ch in raw if ch.isprintable()).strip()
            if raw.strip() == "%":
                if doc:
                    docs.append(doc)
                doc = []
            elif line:
                doc.append(line)
        if doc:
            docs.append(doc)
    return docs


def text_documents(paths: list[str]) -> list[list[str]]:
    docs, doc = [], []
    for p in paths:
        for line in Path(p).read_text(encoding="utf-8").splitlines():
            if line.strip():
                doc.append(line.strip())
            elif doc:
                docs.append(doc)
                doc = []
    if doc:
        docs.append(doc)
    return docs


def child(cmd: list[str], cwd: Path, log: Path, env: dict | None = None) -> dict:
    """Run a child process; its CPU seconds and peak RSS from wait4, its console bytes from the log."""
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n" + log.read_text(errors="replace")[-3000:])
    return {
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "wall_s": wall,
        "peak_rss_mb": ru.ru_maxrss / 1024,
        "console_bytes": log.stat().st_size,
    }


SAMPLE = 50_000  # records read back from each output (both sides shuffle theirs: a fair sample)


def output_stats(path: Path) -> dict:
    """Records (from our sidecar when there is one: a 1M-line shard has 15M records) and, over the first
    SAMPLE records: the SOP label share, real tokens per instance (input_mask: [CLS], [SEP]s and pieces),
    masked predictions per instance, and the share of instances with a segment of at most 2 tokens."""
    from albert_exp.tfrecord import decode_example, iter_records

    sidecar = Path(str(path) + ".json")
    n = ones = tokens = masked = tiny = 0
    for _, payload in iter_records(path):
        ex = decode_example(payload)
        n += 1
        ones += int(ex["next_sentence_labels"][0])
        real = int(ex["input_mask"].sum())
        lb = int(ex["segment_ids"].sum()) - 1  # segment 1 = B + its [SEP]
        la = real - lb - 3
        tokens += real
        masked += int((ex["masked_lm_weights"] > 0).sum())
        tiny += min(la, lb) <= 2
        if n == SAMPLE:
            break
    records = json.loads(sidecar.read_text())["records"] if sidecar.is_file() else None
    return {
        "records": records if records is not None else _count(path),
        "bytes": path.stat().st_size,
        "sop_label1_share": ones / max(n, 1),
        "tokens_per_instance": tokens / max(n, 1),
        "masked_per_instance": masked / max(n, 1),
        "tiny_segment_share": tiny / max(n, 1),
    }


def _count(path: Path) -> int:
    from albert_exp.tfrecord import iter_records

    return sum(1 for _ in iter_records(path))


OURS = """
import sys
from albert_exp.config import PretrainConfig, PretrainingDataConfig
from albert_exp.pretraining_data.shards import ShardTask, process_shard
inp, out, tok, compress, pairing = sys.argv[1:6]
p = PretrainingDataConfig(max_seq_length={max_seq_length}, max_predictions_per_seq={max_predictions_per_seq},
                          dupe_factor={dupe_factor}, masked_lm_prob={masked_lm_prob}, short_seq_prob={short_seq_prob},
                          pairing=pairing, block_lines=20000, compress=compress == "1").resolved(PretrainConfig())
process_shard(ShardTask(0, inp, "", out, tok, True, False, p, 12345))
"""


DYNAMIC = """
import json, sys, time
from pathlib import Path
from albert_exp.pretraining_data.dynamic import save_vocab
from albert_exp.config import PretrainConfig, PretrainingDataConfig
from albert_exp.pretraining_data.shards import ShardTask, Tokenizer, instance_settings, process_shard
inp, out, tok = sys.argv[1:4]
p = PretrainingDataConfig(max_seq_length={max_seq_length}, max_predictions_per_seq={max_predictions_per_seq},
                          dupe_factor=1, masked_lm_prob={masked_lm_prob}, short_seq_prob={short_seq_prob},
                          block_lines=20000, mode="dynamic").resolved(PretrainConfig())
entry = process_shard(ShardTask(0, inp, "", out, tok, True, False, p, 12345))
root = Path(out).parent
save_vocab(root / "vocab.npz", Tokenizer(tok, True, False).vocab)
manifest = {{"mode": "dynamic", "vocab": "vocab.npz", "shards": [entry], "params": instance_settings(p), "seed": 12345}}
(root / "manifest.json").write_text(json.dumps(manifest))
"""

# The loader measured in-process: one DynamicDataset (what each loader worker runs), micro-batches of 512.
LOADER = """
import sys, time
import torch
from albert_exp.pretrain.data import DynamicDataset
manifest, n = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(1)
ds = DynamicDataset(manifest, micro=512, start=0, rank=0, world=1, max_seq_length={max_seq_length}, hint=None)
it = iter(ds)
next(it)  # kernels loaded, first block planned
t, c = time.perf_counter(), time.process_time()
for _ in range(n):
    next(it)
print("RESULT", n * 512, time.process_time() - c, time.perf_counter() - t)
"""

# What one GPU consumes, the figure the loader is held against: the goal for ALBERT-base, seq 64,
# bf16, one H100-class GPU (>= 10,000 sequences/s: the recipe's 700k steps at batch 512 in under 10 hours).
GPU_SEQ_PER_S = 10_000
# CPU cores per GPU on a GPU node: a DGX H100 has 2 x 56 cores for 8 GPUs (14 per GPU); keep 2 for the
# training process itself.
LOADER_CORES_PER_GPU = 12


def dynamic_rows(work: Path, corpus: Path, n_lines: int) -> None:
    """Dynamic mode: bytes per input line of the stored documents against static dupe 40, and the loader's
    samples per CPU-second in one process against what one GPU consumes."""
    out = work / "dynamic" / "shard-00000.arrow"
    out.parent.mkdir(exist_ok=True)
    out.unlink(missing_ok=True)
    Path(str(out) + ".json").unlink(missing_ok=True)
    script = work / "dynamic.py"
    script.write_text(DYNAMIC.format(**SETTINGS))
    r = child([sys.executable, str(script), str(corpus), str(out), str(work / "tokenizer")], ROOT, work / "dyn.log")
    size = out.stat().st_size
    loader = work / "loader.py"
    loader.write_text(LOADER.format(**SETTINGS))
    log = work / "loader.log"
    child([sys.executable, str(loader), str(out.parent / "manifest.json"), "400"], ROOT, log)  # ~36 blocks of 1M lines
    line = next(x for x in log.read_text().splitlines() if x.startswith("RESULT"))
    samples, cpu, wall = float(line.split()[1]), float(line.split()[2]), float(line.split()[3])
    per_core = samples / cpu
    print(
        f"\ndynamic: stored {size / n_lines:,.1f} B/line ({size / 1e6:.2f} MB here, "
        f"{size / n_lines:.1f} MB per 1M lines),"
        f" made in {r['cpu_s']:.1f} CPU-s ({n_lines / r['cpu_s']:,.0f} lines/s/core)"
    )
    print(
        f"dynamic loader: {per_core:,.0f} samples per CPU-second in one process ({samples:.0f} samples, "
        f"micro-batch 512, {wall:.1f} s wall); x {LOADER_CORES_PER_GPU} cores per GPU = "
        f"{per_core * LOADER_CORES_PER_GPU:,.0f}/s = {per_core * LOADER_CORES_PER_GPU / GPU_SEQ_PER_S:.1f}x what "
        f"one GPU consumes ({GPU_SEQ_PER_S:,} seq/s assumed; target >= 5x). One core alone: "
        f"{per_core / GPU_SEQ_PER_S:.2f}x"
    )
    return {"bytes": size, "bytes_per_line": size / n_lines, "loader_samples_per_cpu_s": per_core, "make": r}


# One loader in one process (what each loader worker runs), micro-batches of 512; kind: static (the compiled
# reader), reference (decode_example per record + to_batch: the reader before it), dynamic.
LOADERS = """
import itertools, sys, time
import torch
from albert_exp.pretrain import data
from albert_exp.tfrecord import decode_example
kind, path, seq, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
if kind == "dynamic":
    it = iter(data.DynamicDataset(path, micro=512, start=0, rank=0, world=1, max_seq_length=seq, hint=None))
else:
    stream = data.Stream([path], 0, 1, batch_size=512, max_seq_length=seq, seed=0, block=4096)
    records = stream.records()
    it = (
        stream.batches()
        if kind == "static"
        else (data.to_batch([decode_example(next(records)) for _ in range(512)], seq, path) for _ in itertools.count())
    )
next(it)  # kernels loaded, the first block read / planned
t, c = time.perf_counter(), time.process_time()
for _ in range(n):
    next(it)
print("RESULT", n * 512, time.process_time() - c, time.perf_counter() - t)
"""
# What one GPU consumes (ALBERT-base, bf16, one H100-class GPU): seq -> sequences per second.
GPU_RATES = {64: 10_000, 128: 3_000}
PRED_FOR = {64: 10, 128: 20}  # google's max_predictions_per_seq for these lengths
LOADER_BATCHES = {"static": 200, "reference": 20, "dynamic": 200}  # ~1 CPU-second each
WIDE_VOCAB = 30_000  # ALBERT-base's vocabulary: ids of 2-3 varint bytes, where a small corpus's are 1-2


def wide_records(path: Path, n: int, seq: int, pred: int, seed: int = 0) -> None:
    """n synthetic records with google's features, ids uniform over WIDE_VOCAB, seq/2..seq real tokens."""
    import numpy as np

    from albert_exp.tfrecord import RecordWriter, encode_batch

    rng = np.random.default_rng(seed)
    length = rng.integers(seq // 2, seq + 1, n)
    mask = (np.arange(seq)[None] < length[:, None]).astype(np.int64)
    ids = rng.integers(5, WIDE_VOCAB, (n, seq)) * mask
    seg = (np.arange(seq)[None] >= (length // 2)[:, None]) * mask
    inner = rng.random((n, seq)) + (1 - mask) + (np.arange(seq) == 0)  # keys >= 1 outside 1..length-1
    pos = np.sort(np.argsort(inner, axis=1)[:, :pred], axis=1)
    arrays = {
        "input_ids": ids,
        "input_mask": mask,
        "segment_ids": seg,
        "token_boundary": np.ones((n, seq), np.int64),
        "masked_lm_positions": pos,
        "masked_lm_ids": np.take_along_axis(ids, pos, 1),
        "masked_lm_weights": np.ones((n, pred), np.float32),
        "next_sentence_labels": rng.integers(0, 2, (n, 1)),
    }
    buf, _ = encode_batch(arrays, framed=True)
    with RecordWriter(path) as w:
        w.write_framed(buf.tobytes(), n)
        w.close()


def loader_rows(work: Path, corpus: Path, runs: int) -> dict:
    """Samples per CPU-second of each loader at seq 64 and 128, and the loader workers one GPU needs."""
    import math
    import statistics

    loader = work / "loaders.py"
    loader.write_text(LOADERS)
    out = {}
    for seq, gpu in GPU_RATES.items():
        settings = {**SETTINGS, "max_seq_length": seq, "max_predictions_per_seq": PRED_FOR[seq], "dupe_factor": 5}
        static = work / f"loader-{seq}.tfrecord"
        dyn = work / f"dynamic-{seq}" / "shard-00000.arrow"
        dyn.parent.mkdir(exist_ok=True)
        for f in (static, Path(str(static) + ".json"), dyn, Path(str(dyn) + ".json")):
            f.unlink(missing_ok=True)
        script = work / f"static-{seq}.py"
        script.write_text(OURS.format(**settings))
        child(
            [sys.executable, str(script), str(corpus), str(static), str(work / "tokenizer"), "0", "pack"],
            ROOT,
            work / "s.log",
        )
        script = work / f"dynamic-{seq}.py"
        script.write_text(DYNAMIC.format(**settings))
        child([sys.executable, str(script), str(corpus), str(dyn), str(work / "tokenizer")], ROOT, work / "d.log")
        wide = work / f"wide-{seq}.tfrecord"
        wide_records(wide, 20_000, seq, PRED_FOR[seq])
        paths = {
            "static": static,
            "reference": static,
            "static wide": wide,
            "reference wide": wide,
            "dynamic": dyn.parent / "manifest.json",
        }
        rates: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(runs):  # alternated: a change in the machine's load touches every loader alike
            for kind, path in paths.items():
                log = work / "loader.log"
                how, batches = kind.split()[0], LOADER_BATCHES[kind.split()[0]]
                child([sys.executable, str(loader), how, str(path), str(seq), str(batches)], ROOT, log)
                line = next(x for x in log.read_text().splitlines() if x.startswith("RESULT"))
                rates[kind].append(float(line.split()[1]) / float(line.split()[2]))
        med = {k: statistics.median(v) for k, v in rates.items()}
        out[seq] = {"samples_per_cpu_s": rates, "median": med, "gpu_seq_per_s": gpu}
        print(f"\nloaders at seq {seq} (micro-batch 512, one process, samples per CPU-second, median of {runs}):")
        for kind, label in (
            ("reference", "static, reader before (decode_example + to_batch)"),
            ("static", "static, compiled reader (decode_batch)"),
            ("reference wide", f"  the same on ids over {WIDE_VOCAB:,} pieces: before"),
            ("static wide", "  compiled"),
            ("dynamic", "dynamic (masked on the fly)"),
        ):
            need = math.ceil(gpu / med[kind])
            print(
                f"  {label:52} {med[kind]:>9,.0f}  ({', '.join(f'{r:,.0f}' for r in rates[kind])}); one GPU at "
                f"{gpu:,} seq/s needs {need} loader worker{'s' * (need > 1)} ({gpu / med[kind]:.2f} cores)"
            )
        print(
            f"  compiled / before: {med['static'] / med['reference']:.1f}x, on ids over {WIDE_VOCAB:,} pieces "
            f"{med['static wide'] / med['reference wide']:.1f}x"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", nargs="*", default=[], help="text files in ALBERT's format")
    ap.add_argument("--fortunes", action="store_true", help="use Debian's fortunes as the corpus")
    ap.add_argument("--toy", action="store_true", help="use the toy corpus (synthetic restaurant reviews)")
    ap.add_argument("--lines", type=int, default=20000)
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="write the picked documents N times (--lines 20000 --repeat 50: a 1M-line shard of real "
        "text); the vocabulary is trained on one copy",
    )
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--reference-repo", default="", help="checkout of google-research/albert in a folder `albert`")
    ap.add_argument("--reference-python", default=sys.executable, help="python of the reference's environment")
    ap.add_argument(
        "--reference-pythonpath",
        default="",
        help="extra PYTHONPATH for the reference (e.g. a folder with a tensorflow_hub.py shim where the package "
        "is not installed: its tokenization.py imports it, the benchmark does not use it)",
    )
    ap.add_argument(
        "--pairings",
        default="pack,split,google",
        help="our pairing modes to run (pack: the default; split: format 3; google: google's random-document B)",
    )
    ap.add_argument("--compress", action="store_true", help="also measure GZIP output")
    ap.add_argument("--workdir", default="", help="keep files here (default: a temporary directory)")
    ap.add_argument(
        "--dynamic", action="store_true", help="also dynamic mode: stored bytes per line, loader samples/s per core"
    )
    ap.add_argument("--loaders", action="store_true", help="also both pretrain loaders' samples per CPU-second")
    ap.add_argument("--loader-runs", type=int, default=3, help="--loaders: alternated runs per loader (median)")
    args = ap.parse_args()

    from albert_exp.vocab import build_hf_tokenizer, normalize, train_sentencepiece

    if args.toy:
        from albert_exp.toy import pretraining_documents

        docs = list(pretraining_documents(0, args.lines))  # 2-8 sentences each: more than enough lines
    else:
        docs = fortunes_documents() if args.fortunes else text_documents(args.input)
    if not docs:
        sys.exit("no corpus: give --input FILES or --fortunes")
    picked, n = [], 0
    for d in docs:
        if n >= args.lines:
            break
        picked.append(d)
        n += len(d)
    if n < args.lines:
        print(f"note: the corpus has only {n} lines")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_pd_"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.txt"
    text = "\n\n".join("\n".join(d) for d in picked) + "\n"
    with open(corpus, "w", encoding="utf-8") as fh:
        for i in range(args.repeat):
            fh.write(("\n" if i else "") + text)
    one_sentence = sum(len(d) == 1 for d in picked) / len(picked)
    print(f"corpus: {n} lines x {args.repeat}, {len(picked)} documents ({one_sentence:.0%} one sentence), {corpus}")
    n *= args.repeat
    lines = [normalize(s, lowercase=True, keep_accents=False) for d in picked for s in d]
    train_sentencepiece(lines, work / "spiece", args.vocab_size, "unigram", 0.9995)
    build_hf_tokenizer(work / "spiece.model", work / "tokenizer", lowercase=True, keep_accents=False)

    rows = {}
    script = work / "ours.py"
    script.write_text(OURS.format(**SETTINGS))
    # The compiled kernels are cached on disk after the first run of a code version (as after any install);
    # compile them in an untimed child on a few documents, so the timed run measures the steady state.
    warm = work / "warmup.txt"
    warm.write_text("\n\n".join("\n".join(d) for d in picked[:50]) + "\n", encoding="utf-8")
    w = child(
        [sys.executable, str(script), str(warm), str(work / "warmup.tfrecord"), str(work / "tokenizer"), "0", "pack"],
        ROOT,
        work / "warmup.log",
    )
    print(f"warm-up (compiles the kernels if this code version has no cache yet): {w['wall_s']:.1f} s")
    runs = [(p, False) for p in args.pairings.split(",") if p] + ([("pack", True)] if args.compress else [])
    for pairing, compress in runs:
        name = "ours" + ("" if pairing == "pack" else f" {pairing}") + (" gzip" if compress else "")
        out = work / (name.replace(" ", "_") + ".tfrecord" + (".gz" if compress else ""))
        out.unlink(missing_ok=True)
        Path(str(out) + ".json").unlink(missing_ok=True)
        cmd = [sys.executable, str(script), str(corpus), str(out), str(work / "tokenizer")]
        r = child([*cmd, "1" if compress else "0", pairing], ROOT, work / "ours.log")
        rows[name] = r | output_stats(out)
    if args.reference_repo:
        repo = Path(args.reference_repo).resolve()
        if repo.name != "albert" or not (repo / "create_pretraining_data.py").is_file():
            sys.exit(f"--reference-repo must be a checkout of google-research/albert in a folder named albert: {repo}")
        out = work / "reference.tfrecord"
        cmd = [
            args.reference_python,
            "-m",
            "albert.create_pretraining_data",
            f"--input_file={corpus}",
            f"--output_file={out}",
            f"--vocab_file={work / 'spiece.vocab'}",
            f"--spm_model_file={work / 'spiece.model'}",
            "--do_lower_case=True",
            "--random_seed=12345",
            *[f"--{k}={v}" for k, v in SETTINGS.items()],
        ]
        env = dict(os.environ)
        if args.reference_pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.reference_pythonpath, env.get("PYTHONPATH")]))
        rows["google"] = child(cmd, repo.parent, work / "reference.log", env) | output_stats(out)

    print(f"\nsettings: {SETTINGS}; {n} input lines; one process each; per core = lines / CPU seconds")
    head = (
        f"{'':13} {'lines/s/core':>12} {'wall s':>7} {'peak MB':>7} {'records':>9} {'bytes/line':>10} "
        f"{'SOP=1':>6} {'tok/inst':>8} {'mask/inst':>9} {'seg<=2':>6} {'console B':>10} {'1M lines':>9}"
    )
    print(head)
    for name, r in rows.items():
        rate = n / r["cpu_s"]
        print(
            f"{name:13} {rate:12.0f} {r['wall_s']:7.1f} {r['peak_rss_mb']:7.0f} {r['records']:9d} "
            f"{r['bytes'] / n:10.0f} {r['sop_label1_share']:6.1%} {r['tokens_per_instance']:8.2f} "
            f"{r['masked_per_instance']:9.2f} {r['tiny_segment_share']:6.1%} {r['console_bytes']:10d} "
            f"{1e6 / rate / 60:8.1f}m"
        )
        r["lines_per_cpu_s"] = rate
    print(f"tok/inst, mask/inst, SOP=1, seg<=2 (a segment of <= 2 tokens): over the first {SAMPLE} records")
    how = "measured" if n >= 1_000_000 else "extrapolated: use --lines 20000 --repeat 50 to measure it"
    ours = rows.get("ours")
    if ours:
        print(
            f"\n1M lines: CPU minutes at this rate ({how}). Targets: a 1M-line shard < 2 min on one core "
            f"({1e6 / ours['lines_per_cpu_s'] / 60:.2f} min), peak < 2 GB ({ours['peak_rss_mb']:.0f} MB)"
        )
    if "google" in rows and ours:
        ratio = ours["lines_per_cpu_s"] / rows["google"]["lines_per_cpu_s"]
        print(f"ratio (ours / google, lines per CPU-second): {ratio:.0f}x (target >= 100x)")
        tr = ours["tokens_per_instance"] / rows["google"]["tokens_per_instance"]
        print(f"real tokens per instance, ours / google: {tr:.3f} (target >= 1)")
    dyn = dynamic_rows(work, corpus, n) if args.dynamic else None
    if dyn and ours:
        static = ours["bytes"]
        print(
            f"disk per input line: static dupe {SETTINGS['dupe_factor']} {static / n:,.0f} B, dynamic "
            f"{dyn['bytes_per_line']:,.1f} B: {static / dyn['bytes']:.0f}x less; per 1M lines "
            f"{static / n * 1e6 / 1e9:.2f} GB vs {dyn['bytes_per_line']:.1f} MB"
        )
    loaders = loader_rows(work, corpus, args.loader_runs) if args.loaders else None
    report = {"lines": n, "settings": SETTINGS, "rows": rows, "dynamic": dyn, "loaders": loaders}
    (work / "benchmark.json").write_text(json.dumps(report, indent=1))
    print(f"details: {work / 'benchmark.json'}")


if __name__ == "__main__":
    main()
