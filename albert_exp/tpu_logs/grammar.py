"""The line grammar of run_pretraining.py console output, one file at a time, as a small state machine.

A line is one of three *formats* (or plain text such as traceback lines):

    INFO:tensorflow:loss = 3.1812, step = 200 (191.310 sec)                            absl/python logging
    I0407 23:44:33.365083 140213 basic_session_run_hooks.py:260] loss = 3.1812, ...    glog (no year!)
    2020-04-07 23:40:01.123456: I tensorflow/core/platform/cpu_feature_guard.cc:142] ...  TF C++ (full date)

and its *message* may carry data: `loss = X, step = N`, `global_step/sec: X`, `examples/sec: X`,
`Saving checkpoints for N into URI.`, a `***** Eval results *****` block of `  key = value` lines, a
`***** Running training *****` block (`  Batch size = 512`), `*** Input Files ***`, the end-of-training
markers, or the run_pretraining.py command itself. `FileParser.feed` takes lines in chunks (the same code
serves a whole file and a followed, growing one) and appends columns; times stay year-less (month/day +
seconds) in a small `timeline` that `parse.py` resolves to datetimes once it knows the year.
"""

from __future__ import annotations

import re
from collections import Counter

from albert_exp.tpu_logs.command import flags_from_command

GLOG_TIME = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} ")
FULL_DATE = re.compile(r"(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?:? ?(.*)\Z", re.S)
ABSL_LEVELS = ("INFO:", "WARNING:", "ERROR:", "FATAL:", "DEBUG:", "CRITICAL:")
LOSS = re.compile(r"loss = ([^,\s]+), step = (\d+)(?: \(([^ ]+) sec\))?\s*\Z")
CHECKPOINT = re.compile(r"Saving checkpoints for (\d+) into (\S+?)\.?\s*\Z")
KEY_VALUE = re.compile(r"\s*([A-Za-z_][\w/.-]*) = (\S+)\s*\Z")
INPUT_FILE = re.compile(r"\s+(\S+)\s*\Z")
EXCEPTION = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")
FINISHED = ("Loss for final step", "training_loop marked as finished")

# Reasons a line carries no data (the ingest summary counts them).
BLANK, NO_DATA, WARNING, ERROR, TRACEBACK = "blank", "log message without data", "warning", "error", "traceback"
UNKNOWN, BINARY, TRUNCATED = "unknown format", "binary or undecodable", "truncated last line"
RATE_WITHOUT_STEP = "rate line before any loss line"

# How messages that can carry data begin (loss, global_step/sec, examples/sec, Saving, *****, Loss for final
# step, training_loop, Traceback): anything else at INFO outside a block is chatter, skipped in one test.
DATA_START = frozenset({"lo", "gl", "ex", "Sa", "**", "Lo", "tr", "Tr"})
RATE_METRICS = {"global_step/sec: ": "train/global_step_per_s", "examples/sec: ": "train/examples_per_s"}


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


class FileParser:
    """Parses the lines of one file. Columns grow with every `feed`; `close()` flushes an open eval block."""

    def __init__(self, source: str):
        self.source = source
        # Data rows (one per metric value): line number, timeline index (-1: no time yet), own-time flag.
        self.line: list[int] = []
        self.ti: list[int] = []
        self.own: list[bool] = []
        self.step: list[int] = []
        self.metric: list[str] = []
        self.value: list[float] = []
        self.seg: list[int] = []
        # Checkpoints: (line, ti, step, uri, seg).
        self.checkpoints: list[tuple[int, int, int, str, int]] = []
        # Year-less times: (month, day, seconds of day, year or 0 when the line did not say).
        self.timeline: list[tuple[int, int, float, int]] = []
        self.first_ti = -1
        self.finished_ti: int | None = None
        self.params: dict[str, str] = {}
        self.flags: dict[str, str] = {}
        self.input_files: list[str] = []
        self.restarts: list[tuple[int, int]] = []  # (segment, line) where a new segment began
        self.counts: Counter = Counter()
        self.unknown_examples: list[str] = []
        self.last_error: str | None = None
        self.lines_read = 0
        # State
        self._cur: tuple[int, int, float, int] | None = None
        self._cur_glog: str | None = None
        self._cur_pos = 0  # line number of the current time
        self._cur_ti = -1
        self._segment = 0
        self._seg_has_loss = False
        self._last_loss_step: int | None = None
        self._block: str | None = None
        self._eval: dict[str, tuple[str, int, int, bool]] = {}

    # -- time --------------------------------------------------------------------------------------------
    def _time_index(self) -> int:
        """The timeline index of the current time, materialised on first use (most lines never need it)."""
        if self._cur_ti < 0:
            if self._cur_glog is not None:  # parse the glog time lazily: most timed lines carry no data
                t = self._cur_glog
                self._cur = (
                    int(t[1:3]),
                    int(t[3:5]),
                    int(t[6:8]) * 3600 + int(t[9:11]) * 60 + int(t[12:14]) + int(t[15:21].ljust(6, "0")) / 1e6,
                    0,
                )
                self._cur_glog = None
            if self._cur is None:
                return -1
            self.timeline.append(self._cur)
            self._cur_ti = len(self.timeline) - 1
        return self._cur_ti

    def _set_time(self, month: int, day: int, sod: float, year: int = 0) -> None:
        self._cur, self._cur_ti, self._cur_glog = (month, day, sod, year), -1, None
        if self.first_ti < 0 or year:  # keep the first time and every full date (they anchor the year)
            ti = self._time_index()
            if self.first_ti < 0:
                self.first_ti = ti

    # -- rows --------------------------------------------------------------------------------------------
    def _emit(self, lineno: int, own: bool, step: int, metric: str, value: float) -> None:
        self.line.append(lineno)
        self.ti.append(self._time_index())
        self.own.append(own)
        self.step.append(step)
        self.metric.append(metric)
        self.value.append(value)
        self.seg.append(self._segment)

    def _new_segment(self, lineno: int) -> None:
        self._segment += 1
        self._seg_has_loss = False
        self._last_loss_step = None
        self.restarts.append((self._segment, lineno))

    def _flush_eval(self) -> None:
        if not self._eval:
            return
        block, self._eval = self._eval, {}
        gs = block.pop("global_step", None)
        step = int(gs[0]) if gs and gs[0].lstrip("-").isdigit() else self._last_loss_step
        if step is None:
            return
        for key, (raw, lineno, ti, own) in block.items():
            value = _float(raw)
            if value is None:
                continue
            self.line.append(lineno)
            self.ti.append(ti)
            self.own.append(own)
            self.step.append(step)
            self.metric.append(f"eval/{key}")
            self.value.append(value)
            self.seg.append(self._segment)

    # -- lines -------------------------------------------------------------------------------------------
    def feed(self, lines: list[str], first_lineno: int) -> None:
        count = self.counts
        no_data = 0
        self.lines_read += len(lines)
        lineno = first_lineno - 1
        for text in lines:
            lineno += 1
            if not text or text.isspace():
                count[BLANK] += 1
                if self._block == "eval":
                    self._flush_eval()
                self._block = None
                continue
            if "\x00" in text or "\ufffd" in text or len(text) > 20_000:
                count[BINARY] += 1
                continue
            level = None
            own = False
            c = text[0]
            if c in "IWEF" and text[1:2].isdigit():
                # glog: fixed positions checked cheaply (a regex per line costs a second per million lines)
                end = text.find("] ", 22)
                if end > 0 and text[5:6] == " " and text[8:9] == ":" and text[14:15] == "." and GLOG_TIME.match(text):
                    self._cur_glog, self._cur_ti, self._cur_pos = text[:21], -1, lineno
                    if self.first_ti < 0:
                        self.first_ti = self._time_index()
                    level, msg, own = c, text[end + 2 :], True
                else:
                    msg = text
            elif text.startswith(ABSL_LEVELS):
                lvl, _, rest = text.partition(":")
                msg = rest.partition(":")[2]
                level = lvl[0]
            elif c.isdigit() and (m := FULL_DATE.match(text)):
                g = m.groups()
                self._set_time(
                    int(g[1]),
                    int(g[2]),
                    int(g[3]) * 3600 + int(g[4]) * 60 + int(g[5]) + int((g[6] or "0")[:6].ljust(6, "0")) / 1e6,
                    int(g[0]),
                )
                self._cur_pos = lineno
                rest, own = g[7], True
                # TF C++: "I tensorflow/core/...cc:142] message"; python asctime formats: "INFO ... message"
                if len(rest) > 2 and rest[1] == " " and rest[0] in "IWEF" and "] " in rest:
                    level, msg = rest[0], rest.split("] ", 1)[1]
                else:
                    level, msg = ("W" if "WARN" in rest[:12] else "E" if "ERROR" in rest[:12] else "I"), rest
            else:
                msg = text
            # Fast path: most lines are TPU chatter; a message can carry data only if it starts like one.
            if level == "I" and self._block is None and msg[:2] not in DATA_START and "run_pretraining" not in msg:
                no_data += 1
                continue
            self._message(lineno, text, msg, level, own)
        count[NO_DATA] += no_data

    def _message(self, lineno: int, text: str, msg: str, level: str | None, own: bool) -> None:
        count = self.counts
        block = self._block
        if msg.startswith("loss = "):
            m = LOSS.match(msg)
            value = _float(m.group(1)) if m else None
            if m and value is not None:
                self._end_block()  # an eval block before it belongs to the previous step
                step = int(m.group(2))
                if self._last_loss_step is not None and step < self._last_loss_step:
                    self._new_segment(lineno)  # steps went back: a restart appended to the same file
                self._emit(lineno, own, step, "train/loss", value)
                self._seg_has_loss, self._last_loss_step = True, step
                count["parsed"] += 1
                return
        for prefix, metric in RATE_METRICS.items():
            if msg.startswith(prefix):
                value = _float(msg[len(prefix) :].strip())
                if value is None:
                    break
                if self._last_loss_step is None:
                    count[RATE_WITHOUT_STEP] += 1
                else:
                    self._emit(lineno, own, self._last_loss_step, metric, value)
                    count["parsed"] += 1
                self._end_block()
                return
        if block == "eval":
            m = KEY_VALUE.match(msg)
            if m:
                key, raw = m.groups()
                self._eval.setdefault(key, (raw, lineno, self._time_index(), own))
                count["parsed"] += 1
                return
            if msg.startswith(("saving ", "***** Eval results")):  # best-checkpoint copies; a glog copy
                count[NO_DATA] += 1
                return
        if msg.startswith("***** Eval results"):
            self._end_block()
            self._block = "eval"
            count["parsed"] += 1
            return
        if block in ("train", "evaluation") and "Batch size = " in msg:
            size = msg.split("=", 1)[1].strip()
            self.params["train_batch_size" if block == "train" else "eval_batch_size"] = size
            count["parsed"] += 1
            return
        if block == "inputs" and (m := INPUT_FILE.match(msg)) and not msg.startswith("  name ="):
            if m.group(1) not in self.input_files:
                self.input_files.append(m.group(1))
            count["parsed"] += 1
            return
        if block == "traceback" and (msg.startswith((" ", "\t")) or EXCEPTION.match(msg)):
            count[TRACEBACK] += 1
            if not msg.startswith((" ", "\t")):
                self.last_error = msg.strip()[:300]
                self._block = None
            return
        self._end_block()
        if msg.startswith("Saving checkpoints for "):
            m = CHECKPOINT.match(msg)
            if m:
                step = int(m.group(1))
                self.checkpoints.append((lineno, self._time_index(), step, f"{m.group(2)}-{step}", self._segment))
                count["parsed"] += 1
                return
        if msg.startswith("***** Running training"):
            if self._seg_has_loss:  # a second run in the same file (`tee -a`): a restart
                self._new_segment(lineno)
            self._block = "train"
            count["parsed"] += 1
        elif msg.startswith("***** Running evaluation"):
            self._block = "evaluation"
            count["parsed"] += 1
        elif msg.startswith("*** Input Files ***"):
            self._block = "inputs"
            count["parsed"] += 1
        elif msg.startswith(FINISHED):
            self.finished_ti = self._time_index()
            count["parsed"] += 1
        elif "run_pretraining" in msg and "--" in msg:
            self.flags.update(flags_from_command(msg))
            count["parsed"] += 1
        elif msg.startswith("Traceback (most recent call last)"):
            self._block = "traceback"
            count[TRACEBACK] += 1
        elif level == "W":
            count[WARNING] += 1
        elif level in ("E", "F", "C"):
            count[ERROR] += 1
            self.last_error = msg.strip()[:300]
        elif level is not None:
            count[NO_DATA] += 1
        elif text.startswith("Instructions for updating"):
            count[WARNING] += 1  # TF deprecation warnings go on in plain lines until the next log line
            self._block = "deprecation"
        elif block == "deprecation" or text.startswith(("  ", "\t")):
            count[WARNING] += 1
            self._block = "deprecation"
        else:
            count[UNKNOWN] += 1
            if len(self.unknown_examples) < 5:
                self.unknown_examples.append(f"{self.source}:{lineno}: {text[:120]}")

    def _end_block(self) -> None:
        if self._block == "eval":
            self._flush_eval()
        self._block = None

    def feed_selected(self, lines: list[str], keep: list[int], timed_before: list[int], chatter: int) -> None:
        """Feed only lines[i] for i in `keep` (0-based): the rest is INFO chatter classified in bulk (parse.py),
        counted here. `timed_before[k]`: index of the last glog line before keep[k] (-1: none), so times stay
        exactly what feeding every line would give."""
        for i, tb in zip(keep, timed_before, strict=True):
            if tb >= 0 and tb + 1 > self._cur_pos:  # a chatter line carries the latest time
                self._cur_glog, self._cur_ti, self._cur_pos = lines[tb][:21], -1, tb + 1
                if self.first_ti < 0:
                    self.first_ti = self._time_index()
            self.feed(lines[i : i + 1], i + 1)
        self.counts[NO_DATA] += chatter
        self.lines_read += chatter

    def last_time_from(self, line: str, lineno: int) -> None:
        """The file's last glog line when it was chatter (its time is the file's end time)."""
        if lineno > self._cur_pos:
            self._cur_glog, self._cur_ti, self._cur_pos = line[:21], -1, lineno
            if self.first_ti < 0:
                self.first_ti = self._time_index()

    def close(self) -> None:
        self._end_block()
        if self._cur is not None or self._cur_glog is not None:
            self._time_index()  # the last time seen: the file's end time

    @property
    def last_ti(self) -> int:
        return len(self.timeline) - 1
