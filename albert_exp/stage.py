"""A stage, declared once: what it reads, what it writes, what its output depends on, and the work.

    STAGE = Stage(
        name="vocab",
        section="vocab",
        compute=compute,                               # (Context) -> dict of what the output holds
        inputs=lambda cfg: {"corpus_manifest": ...},   # files or directories: their contents count, not the paths
        needs=lambda cfg: ("corpus",),                 # the stages whose outputs it reads
        describe=lambda cfg: "unigram 8000",           # the run name's tail
    )

Every stage module ends with such a declaration; albert_exp/stages.py lists them in dependency order, and
albert_exp/executor.py runs any of them the same way, from `main` or alone: identity (albert_exp/identity.py),
reuse or resume, the MLflow run, the `.partial` work directory renamed into place when complete,
`results.json`, a lock on the workdir, and side effects on rank 0 only under `torchrun`. A stage's compute
function does the work and nothing of that dance.

This module imports nothing of the package but the floor (config, outputs), so that stage modules can import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from albert_exp.config import ExperimentConfig
from albert_exp.outputs import StageOutput

Paths = dict[str, Path | list[Path]]


def _nothing(cfg: ExperimentConfig) -> Any:
    return {}


def _no_stage(cfg: ExperimentConfig) -> tuple[str, ...]:
    return ()


def _as_is(cfg: ExperimentConfig, upstream: Mapping[str, StageResult]) -> ExperimentConfig:
    return cfg


def _always(cfg: ExperimentConfig, results: dict[str, Any]) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """One stage of an experiment, as data. The executor reads nothing else about it."""

    name: str  # the command and the `stage` tag of its runs: "pretraining-data"
    section: str  # the config section whose settings are its params and (less `not_in_key`) its identity
    compute: Callable[[Context], dict[str, Any]]  # the work: writes into ctx.work, returns what results.json holds
    inputs: Callable[[ExperimentConfig], Paths] = _nothing  # what it reads, by name (contents count, not paths)
    needs: Callable[[ExperimentConfig], tuple[str, ...]] = _no_stage  # stages whose outputs it reads
    uses: Callable[[ExperimentConfig], tuple[str, ...]] = _no_stage  # stages whose results it takes when present
    # settings of its section that only change where or how fast it runs (paths are replaced by input digests)
    not_in_key: frozenset[str] = frozenset()
    key_extra: Callable[[ExperimentConfig], dict[str, Any]] = _nothing  # other settings its output depends on
    # the config it runs under, given the results of the stages it needs (e.g. fine-tuning starts from the
    # pretrained weights); the same in `main` and alone
    configure: Callable[[ExperimentConfig, Mapping[str, StageResult]], ExperimentConfig] = _as_is
    link: Callable[[ExperimentConfig], Path] | None = None  # the path naming its current output (default: its dir)
    describe: Callable[[ExperimentConfig], str] = lambda cfg: ""  # the run name's tail
    # reads and checks the inputs before the run opens (a bad input is one line, not a failed run); what it
    # returns is ctx.prepared (ctx.tracker is None then)
    prepare: Callable[[Context], Any] = lambda ctx: None
    params: Callable[[Context], dict[str, Any]] = lambda ctx: {}  # derived params logged with its config
    resumable: bool = False  # a killed run's work directory is continued (else computed afresh)
    # whether a complete output is all that `cfg` asks for (pretraining: trained as far as max_steps)
    reached: Callable[[ExperimentConfig, dict[str, Any]], bool] = _always
    distributed: bool = False  # every torchrun rank computes (pretraining); rank 0 alone writes and logs
    has_output: bool = True  # False: the run is the result (tune, promote); reuse is `reusable`
    # stages without an output directory (the run is the result): their identity, given the results of the
    # stages they need, and whether an earlier FINISHED run's results still hold
    key: Callable[[ExperimentConfig, Mapping[str, StageResult]], str] | None = None
    reusable: Callable[[ExperimentConfig, Mapping[str, StageResult], dict[str, Any]], bool] = lambda c, u, r: True
    applies: Callable[[ExperimentConfig], bool] = lambda cfg: True  # `main` skips it where it means nothing
    tracked: bool = True  # False: no MLflow run of its own (data made for another stage)
    auto: bool = False  # made whenever a stage needs it, not listed in `stages:`

    def output_link(self, cfg: ExperimentConfig) -> Path:
        return self.link(cfg) if self.link else cfg.stage_dir(self.name)

    @property
    def command(self) -> str:
        return f"albert-exp {self.name}"


@dataclass
class Context:
    """What a stage's compute function gets from the executor."""

    cfg: ExperimentConfig  # the config it runs under (Stage.configure applied)
    output: StageOutput  # its output: it writes into `work`, results.json records paths under `done`
    tracker: Any  # albert_exp.tracking Tracker of its run (an in-memory one on ranks other than 0)
    upstream: Mapping[str, StageResult] = field(default_factory=dict)  # results of the stages it needs
    # caller's callbacks and labels (tune: on_epoch, and label `trial 3`, how the terminal names the run)
    hooks: Mapping[str, Any] = field(default_factory=dict)
    fresh: bool = False  # computed again on purpose (`--rerun`): nothing of an earlier output is continued
    # runs another stage inside this one (a search's trials): executor.run_stage, handed in so that stage
    # modules never import the executor
    run: Callable[..., StageResult] | None = None
    prepared: Any = None  # what Stage.prepare returned
    stage: str = ""  # the name it runs under (`scratch` is fine-tuning's declaration under another name)

    @property
    def work(self) -> Path:
        return self.output.work

    @property
    def done(self) -> Path:
        return self.output.done

    @property
    def key(self) -> str:
        return self.output.key

    @property
    def run_id(self) -> str | None:
        return self.tracker.run_id


@dataclass(frozen=True)
class StageResult:
    """What a stage produced. `run_id` is always the run that computed the output (for a reuse: that earlier
    run; `recorded_by` is the run that recorded the reuse). `values` is results.json less these fields."""

    stage: str
    run_id: str | None
    key: str
    output_dir: str | None
    values: Mapping[str, Any]
    reused: bool = False
    recorded_by: str | None = None

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def as_dict(self) -> dict[str, Any]:
        """The results.json form: the values plus the fields above."""
        out = {**self.values, "stage": self.stage, "run_id": self.run_id, "key": self.key}
        if self.output_dir is not None:
            out["output_dir"] = self.output_dir
        if self.reused:
            out["reused_run_id"] = self.run_id
        return out

    @classmethod
    def from_dict(cls, stage: str, data: Mapping[str, Any], reused: bool = False) -> StageResult:
        own = ("stage", "run_id", "key", "output_dir", "reused_run_id")
        return cls(
            stage,
            data.get("run_id"),
            data.get("key", ""),
            data.get("output_dir"),
            {k: v for k, v in data.items() if k not in own},
            reused,
        )
