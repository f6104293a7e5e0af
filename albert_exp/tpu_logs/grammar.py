"""The line grammar of run_pretraining.py console output, one file at a time, as a small state machine.

A line is one of three *formats* (or plain text such as traceback lines):

    INFO:tensorflow:loss = 3.1812, step = 200 (191.310 sec)                            absl/python logging
    I0407 23:44:33.365083 140213 basic_session_run_hooks.py:260] loss = 3.1812, ...    glog (no year!)
    2020-04-07 23:40:01.123456: I tensorflow/core/platform/cpu_feature_guard.cc:142] ...  TF C++ (full date)

and its *message* may carry data. Messages are matched against three tables, in this order:
`DATA_LINES` (`loss = X, step = N`, `global_step/sec: X`, `examples/sec: X`), the continuation lines of the
open block (`BLOCK_LINES`: `  key = value` of an eval block, `  Batch size = 512`, input files, traceback
frames), then `START_LINES`: lines that begin a block or mark an event (a checkpoint, `***** Eval results`,
`***** Running training`, the end-of-training markers, `Starting evaluation at 2020-01-27T...`, which dates
the run). The run_pretraining.py command itself becomes flags; anything else is counted by its level.

`FileParser.feed` takes lines in chunks (the same code serves a whole file and a followed, growing one) and
appends columns; times stay year-less (month/day + seconds) in a small `timeline` that years.py resolves to
datetimes once it knows the year.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from albert_exp.tpu_logs.command import flags_from_command

GLOG_TIME = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} ")
FULL_DATE = re.compile(r"(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?:? ?(.*)\Z", re.S)
ABSL_LEVELS = ("INFO:", "WARNING:", "ERROR:", "FATAL:", "DEBUG:", "CRITICAL:")
LOSS = re.compile(r"loss = ([^,\s]+), step = (\d+)(?: \(([^ ]+) sec\))?\s*\Z")
CHECKPOINT = re.compile(r"Saving checkpoints for (\d+) into (\S+?)\.?\s*\Z")
KEY_VALUE = re.compile(r"\s*([A-Za-z_][\w/.-]*) = (\S+)\s*\Z")
INPUT_FILE = re.compile(r"\s+(\S+)\s*\Z")
EXCEPTION = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")
EVAL_DATE = re.compile(r"Starting evaluation at (\d{4})-(\d\d)-(\d\d)")  # tf.estimator, before each evaluation
FINISHED = ("Loss for final step", "training_loop marked as finished")
# What the estimator's `Using config: {...}` line states about the run -> run_pretraining.py flag names.
CONFIG_FLAGS = {
    "output_dir": re.compile(r"'_model_dir': '([^']+)'"),
    "save_checkpoints_steps": re.compile(r"'_save_checkpoints_steps': (\d+)"),
    "iterations_per_loop": re.compile(r"iterations_per_loop=(\d+)"),
    "num_tpu_cores": re.compile(r"num_shards=(\d+)"),
}
RATE_METRICS = {"global_step/sec: ": "train/global_step_per_s", "examples/sec: ": "train/examples_per_s"}

# Reasons a line carries no data (the ingest summary counts them).
BLANK, NO_DATA, WARNING, ERROR, TRACEBACK = "blank", "log message without data", "warning", "error", "traceback"
UNKNOWN, BINARY, TRUNCATED = "unknown format", "binary or undecodable", "truncated last line"
RATE_WITHOUT_STEP = "rate line before any loss line"
PARSED = "parsed"

# How messages that can carry data begin (loss, global_step/sec, examples/sec, Saving, Starting evaluation,
# *****, Loss for final step, training_loop, Traceback, Using config): any other INFO message outside a block
# is chatter.
DATA_START = frozenset({"lo", "gl", "ex", "Sa", "St", "**", "Lo", "tr", "Tr", "Us"})
# The same rule as one regex over a whole line, for parse.py's bulk pre-filter (most of a log is chatter).
_CHATTER_MSG = r"(?:[^lgeS*LtTU \t]|l[^o]|g[^l]|e[^x]|S[^at]|\*[^*]|L[^o]|t[^r]|T[^r]|U[^s])"
CHATTER = re.compile(r"(?:I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [^\]]*\] |INFO:[^:]*:)" + _CHATTER_MSG)
MAX_LINE = 20_000  # longer lines are garbage (a binary blob without newlines)


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def is_special(text: str) -> bool:
    """Lines the bulk pre-filter must always hand to the parser: the command, binary garbage."""
    return "run_pretraining" in text or "\x00" in text or "\ufffd" in text or len(text) > MAX_LINE


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
        self.eval_after_finish = False  # `--do_eval` evaluates once training has finished
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
                sod = int(t[6:8]) * 3600 + int(t[9:11]) * 60 + int(t[12:14]) + int(t[15:21].ljust(6, "0")) / 1e6
                self._cur, self._cur_glog = (int(t[1:3]), int(t[3:5]), sod, 0), None
            if self._cur is None:
                return -1
            self.timeline.append(self._cur)
            self._cur_ti = len(self.timeline) - 1
        return self._cur_ti

    def glog_time(self, text: str, lineno: int) -> None:
        """A glog line's time becomes the current time (parsed only if a data line needs it)."""
        if lineno > self._cur_pos:
            self._cur_glog, self._cur_ti, self._cur_pos = text[:21], -1, lineno
            if self.first_ti < 0:
                self.first_ti = self._time_index()

    def _set_time(self, entry: tuple[int, int, float, int], lineno: int) -> None:
        self._cur, self._cur_ti, self._cur_glog, self._cur_pos = entry, -1, None, lineno
        if self.first_ti < 0 or entry[3]:  # keep the first time and every full date (they anchor the year)
            ti = self._time_index()
            if self.first_ti < 0:
                self.first_ti = ti

    # -- rows --------------------------------------------------------------------------------------------
    def _emit(self, lineno: int, ti: int, own: bool, step: int, metric: str, value: float) -> None:
        self.line.append(lineno)
        self.ti.append(ti)
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

    def _end_block(self) -> None:
        """Close the open block; an eval block becomes rows at its `global_step` (else the last loss step)."""
        block, self._block = self._block, None
        if block != "eval" or not self._eval:
            return
        rows, self._eval = self._eval, {}
        gs = rows.pop("global_step", None)
        step = int(gs[0]) if gs and gs[0].lstrip("-").isdigit() else self._last_loss_step
        if step is None:
            return
        for key, (raw, lineno, ti, own) in rows.items():
            value = _float(raw)
            if value is not None:
                self._emit(lineno, ti, own, step, f"eval/{key}", value)

    # -- lines -------------------------------------------------------------------------------------------
    def feed(self, lines: list[str], first_lineno: int) -> None:
        self.lines_read += len(lines)
        for lineno, text in enumerate(lines, first_lineno):
            self.feed_line(text, lineno)

    def feed_line(self, text: str, lineno: int) -> None:
        """One line (not counted in lines_read: `feed` and parse.py's bulk path count)."""
        if not text or text.isspace():
            self.counts[BLANK] += 1
            self._end_block()
            return
        if "\x00" in text or "\ufffd" in text or len(text) > MAX_LINE:
            self.counts[BINARY] += 1
            return
        level, msg, own = self._format(text, lineno)
        # Fast path: most lines are TPU chatter; a message can carry data only if it starts like one.
        if level == "I" and self._block is None and msg[:2] not in DATA_START and "run_pretraining" not in msg:
            self.counts[NO_DATA] += 1
            return
        self._message(lineno, text, msg, level, own)

    def _format(self, text: str, lineno: int) -> tuple[str | None, str, bool]:
        """(level, message, whether the line carries its own time); plain text is (None, text, False)."""
        c = text[0]
        if c in "IWEF" and text[1:2].isdigit():
            # glog: fixed positions checked cheaply (a regex per line costs a second per million lines)
            end = text.find("] ", 22)
            if end > 0 and text[5:6] == " " and text[8:9] == ":" and text[14:15] == "." and GLOG_TIME.match(text):
                self.glog_time(text, lineno)
                return c, text[end + 2 :], True
        elif text.startswith(ABSL_LEVELS):
            lvl, _, rest = text.partition(":")
            return lvl[0], rest.partition(":")[2], False
        elif c.isdigit() and (m := FULL_DATE.match(text)):
            g = m.groups()
            sod = int(g[3]) * 3600 + int(g[4]) * 60 + int(g[5]) + int((g[6] or "0")[:6].ljust(6, "0")) / 1e6
            self._set_time((int(g[1]), int(g[2]), sod, int(g[0])), lineno)
            rest = g[7]
            # TF C++: "I tensorflow/core/...cc:142] message"; python asctime formats: "INFO ... message"
            if len(rest) > 2 and rest[1] == " " and rest[0] in "IWEF" and "] " in rest:
                return rest[0], rest.split("] ", 1)[1], True
            return ("W" if "WARN" in rest[:12] else "E" if "ERROR" in rest[:12] else "I"), rest, True
        return None, text, False

    def _message(self, lineno: int, text: str, msg: str, level: str | None, own: bool) -> None:
        """Data lines first, then the open block's continuation lines, then (the block closed) lines that
        begin a block or mark an event; each handler returns the reason to count, None if it does not match."""
        block = self._block
        reason = _by_prefix(DATA_LINES, self, lineno, msg, own)
        if reason is None and block is not None:
            reason = BLOCK_LINES[block](self, lineno, msg, own)
        if reason is None:
            self._end_block()
            reason = _by_prefix(START_LINES, self, lineno, msg, own)
        if reason is None and "run_pretraining" in msg and "--" in msg:
            self.flags.update(flags_from_command(msg))
            reason = PARSED
        if reason is None:
            self._other(lineno, text, msg, level, block)
        else:
            self.counts[reason] += 1

    def _other(self, lineno: int, text: str, msg: str, level: str | None, block: str | None) -> None:
        """A line without data: counted by level; plain text is a deprecation note's continuation or unknown."""
        count = self.counts
        if level == "W":
            count[WARNING] += 1
        elif level in ("E", "F", "C"):
            count[ERROR] += 1
            self.last_error = msg.strip()[:300]
        elif level is not None:
            count[NO_DATA] += 1
        elif text.startswith("Instructions for updating") or block == "deprecation" or text.startswith(("  ", "\t")):
            count[WARNING] += 1  # TF deprecation warnings go on in plain lines until the next log line
            self._block = "deprecation"
        else:
            count[UNKNOWN] += 1
            if len(self.unknown_examples) < 5:
                self.unknown_examples.append(f"{self.source}:{lineno}: {text[:120]}")

    # -- data lines: (prefix, handler) -------------------------------------------------------------------
    def _loss(self, lineno: int, msg: str, own: bool) -> str | None:
        m = LOSS.match(msg)
        value = _float(m.group(1)) if m else None
        if value is None:
            return None
        self._end_block()  # an eval block before it belongs to the previous step
        step = int(m.group(2))
        if self._last_loss_step is not None and step < self._last_loss_step:
            self._new_segment(lineno)  # steps went back: a restart appended to the same file
        self._emit(lineno, self._time_index(), own, step, "train/loss", value)
        self._seg_has_loss, self._last_loss_step = True, step
        return PARSED

    def _rate(self, lineno: int, msg: str, own: bool) -> str | None:
        prefix = msg[: msg.index(": ") + 2]
        value = _float(msg[len(prefix) :].strip())
        if value is None:
            return None
        self._end_block()
        if self._last_loss_step is None:
            return RATE_WITHOUT_STEP
        self._emit(lineno, self._time_index(), own, self._last_loss_step, RATE_METRICS[prefix], value)
        return PARSED

    # -- continuation lines of the open block ------------------------------------------------------------
    def _eval_line(self, lineno: int, msg: str, own: bool) -> str | None:
        if m := KEY_VALUE.match(msg):
            key, raw = m.groups()
            self._eval.setdefault(key, (raw, lineno, self._time_index(), own))
            return PARSED
        if msg.startswith(("saving ", "***** Eval results")):  # best-checkpoint copies; a glog copy
            return NO_DATA
        return None

    def _batch_size(self, lineno: int, msg: str, own: bool) -> str | None:
        if "Batch size = " not in msg:
            return None
        self.params["train_batch_size" if self._block == "train" else "eval_batch_size"] = msg.split("=", 1)[1].strip()
        return PARSED

    def _input_file(self, lineno: int, msg: str, own: bool) -> str | None:
        if not (m := INPUT_FILE.match(msg)) or msg.startswith("  name ="):
            return None
        if m.group(1) not in self.input_files:
            self.input_files.append(m.group(1))
        return PARSED

    def _traceback_line(self, lineno: int, msg: str, own: bool) -> str | None:
        if msg.startswith((" ", "\t")):
            return TRACEBACK
        if EXCEPTION.match(msg):  # the exception line ends the traceback
            self.last_error, self._block = msg.strip()[:300], None
            return TRACEBACK
        return None

    # -- lines that begin a block or mark an event -------------------------------------------------------
    def _checkpoint(self, lineno: int, msg: str, own: bool) -> str | None:
        if not (m := CHECKPOINT.match(msg)):
            return None
        step = int(m.group(1))
        self.checkpoints.append((lineno, self._time_index(), step, f"{m.group(2)}-{step}", self._segment))
        return PARSED

    def _finished(self, lineno: int, msg: str, own: bool) -> str:
        self.finished_ti = self._time_index()
        return PARSED

    def _eval_date(self, lineno: int, msg: str, own: bool) -> str | None:
        """`Starting evaluation at 2020-01-27T10:15:32Z` (UTC): the year of the line's own, year-less time."""
        if not (m := EVAL_DATE.match(msg)) or (ti := self._time_index()) < 0:
            return None
        year, month = int(m.group(1)), int(m.group(2))
        mo, day, sod, _ = self.timeline[ti]
        year += -1 if mo - month > 6 else 1 if month - mo > 6 else 0  # new year between local time and UTC
        self.timeline[ti] = (mo, day, sod, year)
        if self.finished_ti is not None:
            self.eval_after_finish = True
        return PARSED

    def _using_config(self, lineno: int, msg: str, own: bool) -> str:
        for flag, pattern in CONFIG_FLAGS.items():
            if m := pattern.search(msg):
                self.params[flag] = m.group(1)
        return PARSED

    def _traceback(self, lineno: int, msg: str, own: bool) -> str:
        self._block = "traceback"
        return TRACEBACK

    def close(self) -> None:
        self._end_block()
        if self._cur is not None or self._cur_glog is not None:
            self._time_index()  # the last time seen: the file's end time

    @property
    def last_ti(self) -> int:
        return len(self.timeline) - 1


Handler = Callable[[FileParser, int, str, bool], "str | None"]


def _by_prefix(table: list[tuple[str, Handler]], parser: FileParser, lineno: int, msg: str, own: bool) -> str | None:
    """The first handler whose prefix starts the message decides (None: it did not match after all)."""
    for prefix, handler in table:
        if msg.startswith(prefix):
            return handler(parser, lineno, msg, own)
    return None


def _begin(block: str) -> Handler:
    """A handler that opens `block` (a second `Running training` in one file is a restart)."""

    def begin(self: FileParser, lineno: int, msg: str, own: bool) -> str:
        if block == "train" and self._seg_has_loss:  # a second run in the same file (`tee -a`): a restart
            self._new_segment(lineno)
        if block in ("eval", "evaluation") and self.finished_ti is not None:
            self.eval_after_finish = True
        self._block = block
        return PARSED

    return begin


DATA_LINES: list[tuple[str, Handler]] = [
    ("loss = ", FileParser._loss),
    ("global_step/sec: ", FileParser._rate),
    ("examples/sec: ", FileParser._rate),
]
BLOCK_LINES: dict[str, Handler] = {
    "eval": FileParser._eval_line,
    "train": FileParser._batch_size,
    "evaluation": FileParser._batch_size,
    "inputs": FileParser._input_file,
    "traceback": FileParser._traceback_line,
    "deprecation": lambda self, lineno, msg, own: None,
}
START_LINES: list[tuple[str, Handler]] = [
    ("Saving checkpoints for ", FileParser._checkpoint),
    ("***** Eval results", _begin("eval")),
    ("***** Running training", _begin("train")),
    ("***** Running evaluation", _begin("evaluation")),
    ("*** Input Files ***", _begin("inputs")),
    (FINISHED[0], FileParser._finished),
    (FINISHED[1], FileParser._finished),
    ("Starting evaluation at ", FileParser._eval_date),
    ("Traceback (most recent call last)", FileParser._traceback),
    ("Using config: ", FileParser._using_config),
]
