"""The tracking boundary: the only module of the stages that talks to MLflow.

Stages log through a `Tracker` bound to one run id (every call names its run; nothing depends on MLflow's
"active run"): `MlflowTracker` for real runs, `FakeTracker` (same interface, records in memory) for unit tests
and non-zero ranks. `offline()` makes every `stage_run` yield a FakeTracker, so a stage's `run(cfg)` can be
tested without a store; the end-to-end tests keep the real one.

Every stage opens its run with `stage_run(cfg, stage, description)`: a child of the enclosing stage run (the
`main` pipeline or a tuning study), or the run `mlflow run` created (MLFLOW_RUN_ID), or a new run in the
experiment named by the config; `resume_run_id` reattaches to the run a checkpoint was written by. The run gets
the conventional tags, who runs it (host, pid, start), the resolved config (flattened params and a YAML
artifact), and ends FAILED on an exception, KILLED on Ctrl-C or SIGTERM: never left RUNNING by a live process.
A process killed with SIGKILL cannot end its run: the next `stage_run` on the same store marks runs of dead
processes on this host KILLED with a reason (`sweep_dead_runs`).

Also here: the registry calls of `promote` (`Registry`), closing a dead Optuna trial's runs (`close_runs`),
artifact downloads and run look-ups for lineage.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from albert_exp.config import ExperimentConfig, flatten, to_dict, to_yaml
from albert_exp.digest import code_version
from albert_exp.outputs import StageOutput, producing_run

# Tags that say who runs a stage: `sweep_dead_runs` closes a RUNNING run whose process is gone.
HOST, PID, PID_START = "albert_exp.host", "albert_exp.pid", "albert_exp.pid_start"
KILLED_REASON = "killed_reason"
KEY = "albert_exp.key"  # the stage identity of the output a run computed (albert_exp/identity.py)
PARENT = "albert_exp.resumed_under"  # the parent run of the invocation that resumed a run
REUSED = "reused_run_id"  # on a stage run of `main` that reused an earlier run's output instead of computing
RUN_FILE = "run.json"  # in a stage's work directory: the run computing it
UPSTREAM = "upstream."  # tag prefix: upstream.<stage> = the run that produced an input
RESUMED_AFTER = "albert_exp.resumed_after"  # on a run a rerun continued: why it had stopped


class FakeTracker:
    """The tracker interface; this implementation records in memory (unit tests, non-zero ranks)."""

    run_id: str | None = None
    experiment_id: str | None = None

    def __init__(self) -> None:
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.artifacts: list[str] = []
        self.inputs: list[dict[str, str]] = []

    def log_params(self, params: dict[str, Any]) -> None:
        # MLflow caps a param value at 6000 characters; the full config is also logged as YAML.
        self.params.update({k: ("" if v is None else str(v))[:6000] for k, v in params.items()})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.tags.update({k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.log_history([(step, metrics)])

    def log_history(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        """Several steps at once (one batched write to the store)."""
        for step, metrics in rows:
            for k, v in metrics.items():
                self.metrics.setdefault(k, []).append((int(step), float(v)))

    def logged_steps(self, keys: set[str]) -> set[tuple[str, int]]:
        """(metric, step) pairs of `keys` already in this run (a resumed run skips them)."""
        return {(k, s) for k in keys for s, _ in self.metrics.get(k, [])}

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.artifacts.append(f"{artifact_path or ''}/{Path(path).name}".lstrip("/"))

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.artifacts.append(artifact_path or "")

    def log_dict(self, data: dict, artifact_file: str) -> None:
        self.artifacts.append(artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.artifacts.append(artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.artifacts.append(artifact_file)

    def log_input(
        self, df: Any, name: str, source: str, context: str, digest: str | None = None, targets: str | None = None
    ) -> None:
        self.inputs.append({"name": name, "source": str(source), "context": context, "digest": digest or ""})

    def link_model_metrics(self, model_id: str, step: int) -> None:
        """The run's metrics at `step` become the logged model's (shown on its page in the UI)."""

    def log_input_digest(self, name: str, source: str, digest: str, context: str = "input") -> None:
        """An input known by its content digest (a manifest, a model or tokenizer directory)."""
        self.inputs.append({"name": name, "source": str(source), "context": context, "digest": digest})


class MlflowTracker(FakeTracker):
    """Logs into one MLflow run, named by its id in every call; every metric carries an explicit step."""

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self._client = store_client()
        self.run_id = run_id
        self.experiment_id = self._client.get_run(run_id).info.experiment_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        super().log_params(params)
        new = {k: v for k, v in self.params.items() if k in params}
        self._client.log_batch(self.run_id, params=[Param(k, v) for k, v in new.items()])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        super().set_tags(tags)
        self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_history(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        from mlflow.entities import Metric

        super().log_history(rows)
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(s)) for s, m in rows for k, v in m.items()]
        if batch:
            self._client.log_batch(self.run_id, metrics=batch)  # splits large batches itself

    def logged_steps(self, keys: set[str]) -> set[tuple[str, int]]:
        return {(k, h.step) for k in keys for h in self._client.get_metric_history(self.run_id, k)}

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._client.log_artifacts(self.run_id, str(path), artifact_path)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        self._client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self._client.log_figure(self.run_id, figure, artifact_file)

    def link_model_metrics(self, model_id: str, step: int) -> None:
        from mlflow.entities import Metric

        metrics = []
        for key in self._client.get_run(self.run_id).data.metrics:
            for m in self._client.get_metric_history(self.run_id, key):
                if m.step == step and m.model_id is None:
                    metrics.append(Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id, run_id=self.run_id))
        if metrics:
            self._client.log_batch(self.run_id, metrics=metrics)

    def log_input(
        self, df: Any, name: str, source: str, context: str, digest: str | None = None, targets: str | None = None
    ) -> None:
        import mlflow.data
        from mlflow.data.dataset_source_registry import get_registered_sources
        from mlflow.entities import DatasetInput, InputTag

        super().log_input(df, name, source, context, digest, targets)
        # an explicit source object: a bare path is ambiguous to MLflow's source registry (it warns)
        local = next(s for s in get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource")
        dataset = mlflow.data.from_pandas(
            df, source=local(str(Path(source).resolve())), name=name, digest=digest, targets=targets
        )
        entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
        self._client.log_inputs(self.run_id, datasets=[entity])

    def log_input_digest(self, name: str, source: str, digest: str, context: str = "input") -> None:
        from mlflow.data.dataset_source_registry import get_registered_sources
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        super().log_input_digest(name, source, digest, context)
        local = next(s for s in get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource")
        dataset = MetaDataset(local(str(Path(source).resolve())), name=name, digest=digest[:36])
        entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
        self._client.log_inputs(self.run_id, datasets=[entity])


class SkipLogged:
    """A tracker for a resumed loop: drops the (metric, step) pairs its run already has (a loop resumed from a
    checkpoint recomputes the steps after it, which a killed run may have logged), so every step is in the
    history once."""

    def __init__(self, inner: FakeTracker) -> None:
        self._inner = inner
        self._seen: dict[str, set[int]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def log_history(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        for k in {k for _, m in rows for k in m} - set(self._seen):
            self._seen[k] = {s for _, s in self._inner.logged_steps({k})}
        fresh = [(s, {k: v for k, v in m.items() if s not in self._seen[k]}) for s, m in rows]
        self._inner.log_history([(s, m) for s, m in fresh if m])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.log_history([(step, metrics)])


def git_commit() -> str:
    """The code version as a tag: the commit, `-dirty+<hash of the changes>` when tracked files changed."""
    return code_version()


# The innermost open stage run of this context (a stage's run is the child of its enclosing one) and the tags
# and early-stop exceptions every stage run opened in this context gets (a tuning study tags each trial's
# finetune run with its study and trial number, so a run left by a killed worker can be found and closed).
_CURRENT: contextvars.ContextVar[FakeTracker | None] = contextvars.ContextVar("albert_exp_run", default=None)
_EXTRA_TAGS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("albert_exp_tags", default=None)
_EARLY_STOP: contextvars.ContextVar[tuple[type, ...]] = contextvars.ContextVar("albert_exp_stop", default=())
# Offline: the list that collects the FakeTrackers stage runs yield instead of MLflow runs.
_OFFLINE: contextvars.ContextVar[list[FakeTracker] | None] = contextvars.ContextVar("albert_exp_offline", default=None)


@contextlib.contextmanager
def run_tags(tags: dict[str, Any], early_stop: tuple[type, ...] = ()) -> Iterator[None]:
    """Stage runs opened inside get `tags`; an exception of an `early_stop` type ends them KILLED with the tag
    `pruned=true` (stopped early on purpose: not a failure, not finished)."""
    token = _EXTRA_TAGS.set({**(_EXTRA_TAGS.get() or {}), **tags})
    stop = _EARLY_STOP.set(_EARLY_STOP.get() + tuple(early_stop))
    try:
        yield
    finally:
        _EXTRA_TAGS.reset(token)
        _EARLY_STOP.reset(stop)


@contextlib.contextmanager
def offline() -> Iterator[list[FakeTracker]]:
    """Every stage_run inside yields a FakeTracker (collected in the yielded list): stages run without a store."""
    runs: list[FakeTracker] = []
    token = _OFFLINE.set(runs)
    try:
        yield runs
    finally:
        _OFFLINE.reset(token)


def current_run_id() -> str | None:
    """The id of the innermost open stage run (None outside one, or offline)."""
    run = _CURRENT.get()
    return run.run_id if run else None


def tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


_READY: set[str] = set()  # stores this process has initialised
_LOCK_KEY = 0x616C62657274  # PostgreSQL advisory lock id ("albert") for the schema set-up


def store_client() -> Any:
    """An MlflowClient of the current store, whose tables exist. MLflow creates (or migrates) the schema on a
    process's first call; two processes doing that at once on a fresh store crash (sqlite: SQLAlchemy's
    CircularDependencyError; PostgreSQL: duplicate tables). So the first call runs under a lock: a file lock
    beside a sqlite database, an advisory lock in PostgreSQL (held across machines)."""
    from mlflow import MlflowClient

    uri = tracking_uri()
    if uri not in _READY:
        if uri.startswith("postgresql"):
            from albert_exp.extras import require

            require("postgres", "a PostgreSQL tracking store (MLFLOW_TRACKING_URI)")
        with _store_lock(uri):
            MlflowClient().search_experiments(max_results=1)
        _READY.add(uri)
    return MlflowClient()


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        import fcntl

        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(db.with_name(db.name + ".lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield
        return
    if uri.startswith("postgresql"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri)
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
        finally:
            engine.dispose()
        return
    yield  # a tracking server (http) sets up its own store


def _process_start(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, from /proc): a pid reused by another process after
    a kill has another start time. Empty where /proc is not available."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return not start or _process_start(pid) in ("", start)


def who() -> dict[str, str]:
    """Tags naming the process that runs a stage (host, pid, process start, wall-clock start)."""
    return {
        HOST: socket.gethostname(),
        PID: str(os.getpid()),
        PID_START: _process_start(os.getpid()),
        "albert_exp.started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def owner_alive(tags: dict[str, str]) -> bool | None:
    """Whether the process named by a run's (or trial's) `who()` tags lives; None: another host, unknown."""
    if tags.get(HOST) != socket.gethostname() or not tags.get(PID):
        return None
    return process_alive(int(tags[PID]), tags.get(PID_START, ""))


def sweep_dead_runs(experiment_ids: list[str]) -> list[str]:
    """Mark RUNNING runs whose process on this host is gone (SIGKILL, power loss) KILLED, with the reason."""
    client = store_client()
    closed = []
    for run in client.search_runs(experiment_ids, "attributes.status = 'RUNNING'"):
        if owner_alive(run.data.tags) is False:
            tags = run.data.tags
            reason = f"process {tags[PID]} on {tags[HOST]} is gone (killed); found by pid {os.getpid()}"
            client.set_tag(run.info.run_id, KILLED_REASON, reason)
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
    if closed:
        print(f"marked {len(closed)} run(s) of dead processes KILLED: {', '.join(closed)}")
    return closed


def close_runs(run_ids: set[str], experiment_id: str | None, tag_filter: dict[str, str], reason: str) -> list[str]:
    """End the RUNNING runs among `run_ids` and those of `experiment_id` whose tags match, as KILLED."""
    client = store_client()
    ids = set(run_ids) - {None}
    if experiment_id:
        query = " and ".join(f"tags.{k} = '{v}'" for k, v in tag_filter.items())
        ids |= {r.info.run_id for r in client.search_runs([experiment_id], query)}
    closed = []
    for run_id in sorted(ids):
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, KILLED_REASON, reason)
            client.set_terminated(run_id, status="KILLED")
            closed.append(run_id)
    return closed


def _log_lineage(tracker: FakeTracker, inputs: dict[str, tuple[Path | list[Path], str]]) -> None:
    """Tag the runs that produced this stage's inputs and log the inputs with their content digests."""
    tracker.set_tags(upstream_tags({name: p for name, (p, _) in inputs.items()}))
    for name, (p, digest) in inputs.items():
        source = p[0].parent if isinstance(p, list) else p
        tracker.log_input_digest(name, str(source), digest)


def upstream_tags(paths: dict[str, Path | list[Path]]) -> dict[str, str]:
    """`upstream.<stage>` = run id for every input that is another stage's output in this store."""
    tags: dict[str, str] = {}
    for value in paths.values():
        for p in value if isinstance(value, list) else [value]:
            run_id = producing_run(p) if Path(p).exists() else None
            run = get_run(run_id) if run_id else None
            if run is not None:
                tags[UPSTREAM + run.tags.get("stage", "unknown")] = run_id
    return tags


def _note_resume(tracker: MlflowTracker) -> None:
    """A run marked KILLED (its process died) that a rerun continues: the reason moves to `resumed_after`."""
    reason = tracker._client.get_run(tracker.run_id).data.tags.get(KILLED_REASON)
    if reason:
        tracker.set_tags({RESUMED_AFTER: reason})
        tracker._client.delete_tag(tracker.run_id, KILLED_REASON)


def _recorded_run(work: Path) -> str | None:
    """The run that started computing `work`, if this store has it (else: a new run)."""
    path = work / RUN_FILE
    if not path.is_file():
        return None
    run_id = json.loads(path.read_text()).get("run_id")
    return run_id if run_id and get_run(run_id) is not None else None


def _open_run(cfg: ExperimentConfig, run_name: str, parent: FakeTracker | None, resume_run_id: str | None) -> str:
    """The id of the run to log into: a resumed one, the one `mlflow run` made, or a new (child) run. A new run
    is created with the tags naming its process, so the dead-run sweep can close it whatever fails next."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    client = store_client()
    if resume_run_id:
        return resume_run_id
    env_run = os.environ.pop("MLFLOW_RUN_ID", None) if parent is None else None
    if env_run:
        return env_run
    if parent is not None and parent.experiment_id:
        exp_id = parent.experiment_id
    else:
        exp = client.get_experiment_by_name(cfg.name)
        exp_id = exp.experiment_id if exp else _create_experiment(client, cfg.name)
    tags = {MLFLOW_RUN_NAME: run_name, **who()}
    if parent is not None and parent.run_id:
        tags[MLFLOW_PARENT_RUN_ID] = parent.run_id
    return client.create_run(exp_id, tags=tags, run_name=run_name).info.run_id


def _create_experiment(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    try:  # marked as model training: MLflow 3 would open it in its GenAI view
        return client.create_experiment(name, tags={"mlflow.experimentKind": "custom_model_development"})
    except MlflowException:  # created meanwhile by a process started at the same time
        return client.get_experiment_by_name(name).experiment_id


def _log_resolved_config(
    cfg: ExperimentConfig, stage: str, section: str | None, extra: dict[str, Any] | None, tracker: FakeTracker
) -> None:
    """The stage's own config section, flattened, as params (plus derived values) and the whole YAML."""
    resolved = to_dict(cfg)
    params = {"name": cfg.name, "seed": cfg.seed}
    s = section or stage.replace("-", "_")
    if s in resolved:
        params.update(flatten(resolved[s], f"{s}."))
    params.update(extra or {})
    tracker.log_params(params)
    tracker.log_text(to_yaml(cfg), "config/resolved.yaml")


def _stage_tags(
    cfg: ExperimentConfig, stage: str, output: StageOutput | None, parent: FakeTracker | None, resumed: bool
) -> dict[str, str]:
    tags = {"stage": stage, "experiment_config": cfg.source, "git_commit": git_commit()}
    if output is not None:
        tags.update({KEY: output.key, "output_dir": str(output.done)})
    if resumed and parent is not None and parent.run_id:
        tags[PARENT] = parent.run_id
    tags.update(_EXTRA_TAGS.get() or {})
    return tags


def _final_status(exc: BaseException | None, tracker: FakeTracker) -> str:
    """How the run ends: FINISHED, KILLED (interrupted, or pruned by Optuna: tagged `pruned`) or FAILED."""
    if exc is None:
        return "FINISHED"
    if isinstance(exc, KeyboardInterrupt):
        return "KILLED"
    if isinstance(exc, Exception) and isinstance(exc, _EARLY_STOP.get()):  # stopped early on purpose
        tracker.set_tags({"pruned": "true"})
        return "KILLED"
    return "FAILED"


def _close_run(run_id: str, status: str) -> None:
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        mlflow.end_run(status=status)
    else:
        store_client().set_terminated(run_id, status=status)


@contextlib.contextmanager
def stage_run(
    cfg: ExperimentConfig,
    stage: str,
    description: str = "",
    *,
    section: str | None = None,
    extra_params: dict[str, Any] | None = None,
    enabled: bool = True,
    resume_run_id: str | None = None,
    output: StageOutput | None = None,
    inputs: dict[str, tuple[Path | list[Path], str]] | None = None,
) -> Iterator[FakeTracker]:
    """Open the MLflow run of one stage (or reattach to `resume_run_id`) and log its resolved config.

    With `output` (albert_exp.outputs.StageOutput) the run is recorded in its work directory, so a rerun that
    resumes the same output reattaches to the same run: one run per computation, one continuous history.
    `inputs` ({name: (paths, content digest)}) become the run's dataset inputs and `upstream.<stage>` tags.
    From the moment the run exists it names its process (host, pid, start) and anything that fails after
    that ends it FAILED (KILLED on Ctrl-C or SIGTERM): a full disk cannot leave it RUNNING."""
    if not enabled or _OFFLINE.get() is not None:
        fake = FakeTracker()
        if _OFFLINE.get() is not None:
            _OFFLINE.get().append(fake)
        yield fake
        return
    import mlflow

    parent = _CURRENT.get()
    if output is not None and resume_run_id is None:
        resume_run_id = _recorded_run(output.work)
    run_id = _open_run(cfg, f"{stage} {description}".strip(), parent, resume_run_id)
    tracker = MlflowTracker(run_id)
    token = _CURRENT.set(tracker)
    error: BaseException | None = None
    try:
        with signals_as_interrupt():  # a scheduler's SIGTERM closes the run as KILLED
            tracker.set_tags(who())  # (a resumed run, or the one `mlflow run` made, names its new process)
            if resume_run_id:
                _note_resume(tracker)
            if output is not None:
                (output.work / RUN_FILE).write_text(json.dumps({"run_id": run_id}))
            if parent is None:
                sweep_dead_runs([tracker.experiment_id])
            # MLflow's model logging (pyfunc.log_model) writes into the active run: make ours active while open
            mlflow.start_run(run_id=run_id, nested=True)
            if not resume_run_id:  # a reattached run has its params already (MLflow params are immutable)
                _log_resolved_config(cfg, stage, section, extra_params, tracker)
            tracker.set_tags(_stage_tags(cfg, stage, output, parent, bool(resume_run_id)))
            if inputs and not resume_run_id:
                _log_lineage(tracker, inputs)
            yield tracker
    except BaseException as exc:
        error = exc
        raise
    finally:
        _CURRENT.reset(token)
        _close_run(run_id, _final_status(error, tracker))


def write_results(out_dir: str | Path, results: dict[str, Any], tracker: FakeTracker | None = None) -> Path:
    """Every stage ends by writing results.json into its output directory (tests and Optuna read it)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    tmp = tempfile.NamedTemporaryFile("w", dir=out, delete=False, suffix=".tmp")
    with tmp:
        json.dump(results, tmp, indent=2, sort_keys=True, default=str)
    os.replace(tmp.name, path)
    if tracker is not None:
        tracker.log_artifact(path)
    return path


# ----------------------------------------------------------------------------------------------------------
# Reading runs back, and the model registry (promote, lineage)


@dataclass
class RunView:
    """What the stages read back about a run."""

    run_id: str
    experiment_id: str
    status: str
    name: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    inputs: list[dict[str, str]] = field(default_factory=list)


def get_run(run_id: str) -> RunView | None:
    """The run, or None when this store has no such run."""
    from mlflow.exceptions import MlflowException

    try:
        r = store_client().get_run(run_id)
    except MlflowException:
        return None
    inputs = [
        {"name": d.dataset.name, "digest": d.dataset.digest, "source": d.dataset.source}
        for d in (r.inputs.dataset_inputs if r.inputs else [])
    ]
    return RunView(
        r.info.run_id,
        r.info.experiment_id,
        r.info.status,
        r.info.run_name or "",
        dict(r.data.tags),
        dict(r.data.params),
        dict(r.data.metrics),
        inputs,
    )


def finished_run(run_id: str | None) -> RunView | None:
    """The run `run_id` if this store has it and it FINISHED (the run a complete output names as its maker)."""
    run = get_run(run_id) if run_id else None
    return run if run is not None and run.status == "FINISHED" else None


def run_url(run: RunView) -> str:
    """Where the run is: the UI's address for an http store, else the store URI and the run's path in it."""
    uri = tracking_uri()
    if uri.startswith("http"):
        return f"{uri.rstrip('/')}/#/experiments/{run.experiment_id}/runs/{run.run_id}"
    return f"{uri} experiment {run.experiment_id} run {run.run_id}"


def download_artifacts(uri: str) -> str:
    import mlflow

    return mlflow.artifacts.download_artifacts(uri)


def has_model(uri: str) -> bool:
    import mlflow

    try:
        mlflow.models.get_model_info(uri)
    except (mlflow.exceptions.MlflowException, OSError):
        return False
    return True


class Registry:
    """The model-registry calls `promote` and `lineage` make."""

    def __init__(self) -> None:
        self._client = store_client()

    def create_model(self, name: str, tags: dict[str, str], description: str) -> bool:
        """Create registered model `name`; False if it exists already (atomic in every store: a lock)."""
        from mlflow.exceptions import MlflowException

        try:
            self._client.create_registered_model(name, tags=tags, description=description)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code) and "already exists" not in str(exc):
                raise
            return False
        return True

    def model_tags(self, name: str) -> dict[str, str] | None:
        from mlflow.exceptions import MlflowException

        try:
            return dict(self._client.get_registered_model(name).tags)
        except MlflowException:
            return None

    def delete_model(self, name: str) -> None:
        self._client.delete_registered_model(name)

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        self._client.set_registered_model_tag(name, key, value)

    def version_of_run(self, name: str, run_id: str) -> Any | None:
        for v in self._client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
            return v
        return None

    def version(self, name: str, version: str) -> Any | None:
        from mlflow.exceptions import MlflowException

        try:
            return self._client.get_model_version(name, version)
        except MlflowException:
            return None

    def by_alias(self, name: str, alias: str) -> Any | None:
        from mlflow.exceptions import MlflowException

        try:
            return self._client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None

    def register(self, model_uri: str, name: str, tags: dict[str, str]) -> Any:
        import mlflow

        return mlflow.register_model(model_uri, name, tags=tags)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._client.set_registered_model_alias(name, alias, version)

    def set_version_tags(self, name: str, version: str, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self._client.set_model_version_tag(name, version, k, str(v))

    def describe_version(self, name: str, version: str, description: str) -> None:
        self._client.update_model_version(name, version, description=description)

    def describe_model(self, name: str, description: str, tags: dict[str, Any]) -> None:
        self._client.update_registered_model(name, description=description)
        for k, v in tags.items():
            self._client.set_registered_model_tag(name, k, str(v))


# ----------------------------------------------------------------------------------------------------------
# Runs back-filled from outside the process that trained (tpu-logs: console logs of a TPU job). A RunRecord is
# an MlflowTracker that also logs points with their own timestamps, reads values back, downloads its artifacts
# and ends itself; RunStore finds, gets and creates such runs in one experiment.


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM (kill, timeout, docker stop, systemd) raises KeyboardInterrupt as Ctrl-C does,
    so the caller's wrap-up runs; a second signal during that wrap-up is ignored."""

    def interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_METRIC_COLUMNS = {"key", "value", "timestamp", "step", "is_nan", "run_uuid"}  # MLflow 3's metrics, latest_metrics


def _bulk_log(client: Any, run_id: str, points: list[tuple[str, float, int, int]]) -> bool:
    """Metric points (key, value, timestamp ms, step) into a SQL store in one transaction: one executemany into
    MLflow's `metrics` table and the run's `latest_metrics` rows moved on as MLflow's `log_batch` moves them (by
    step, then time, then value), through MLflow's own table definitions and session. `log_batch` costs ~80 us
    of ORM work per point (a 1M-line TPU log has 30,000: 2.5 s); this ~15 us (0.5 s). False, nothing written, for
    any other store, a table layout not known here, or a point the run already has (the caller then uses
    `log_batch`, which skips those). tests/test_tracking.py checks both ways leave the same history and latest
    values, tests/test_team.py on PostgreSQL too."""
    import math

    import sqlalchemy
    from mlflow.exceptions import MlflowException
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = client._tracking_client.store
    layout = ({c.name for c in t.__table__.columns} for t in (SqlMetric, SqlLatestMetric))
    if not points or not isinstance(store, SqlAlchemyStore) or any(cols != _METRIC_COLUMNS for cols in layout):
        return False
    rows: dict[tuple, None] = {}  # (key, timestamp, step, value, is_nan) as stored; identical points once
    for key, value, timestamp, step in points:
        is_nan, value = store.sanitize_metric_value(value) if not math.isfinite(value) else (False, value)
        rows[key, timestamp, step, value, is_nan] = None
    newest: dict[str, tuple] = {}  # per key, the point latest_metrics should hold: (step, timestamp, value, is_nan)
    for key, timestamp, step, value, is_nan in rows:
        if (step, timestamp, value) > newest.get(key, (-math.inf,)):
            newest[key] = (step, timestamp, value, is_nan)
    columns = ("key", "timestamp", "step", "value", "is_nan")
    try:
        with store.ManagedSessionMaker(read_only=False) as session:
            values = [{"run_uuid": run_id, **dict(zip(columns, row, strict=True))} for row in rows]
            session.connection().execute(SqlMetric.__table__.insert(), values)  # one executemany
            latest = session.query(SqlLatestMetric).filter(
                SqlLatestMetric.run_uuid == run_id, SqlLatestMetric.key.in_(sorted(newest))
            )
            have = {m.key: m for m in latest.order_by(SqlLatestMetric.key).with_for_update()}
            for key, (step, timestamp, value, is_nan) in newest.items():
                old = have.get(key)
                if old is None:
                    session.add(
                        SqlLatestMetric(
                            run_uuid=run_id, key=key, step=step, timestamp=timestamp, value=value, is_nan=is_nan
                        )
                    )
                elif (step, timestamp, value) > (old.step, old.timestamp, old.value):
                    old.step, old.timestamp, old.value, old.is_nan = step, timestamp, value, is_nan
    except MlflowException as e:  # its session wraps SQLAlchemy's errors (and rolls back)
        if isinstance(e.__cause__, sqlalchemy.exc.IntegrityError):  # a point the run has
            return False
        raise
    return True


class RunRecord(MlflowTracker):
    """One run, bound to its id. Points go in with `log_batch`, 1,000 per request (MLflow's limit); into a SQL
    store (sqlite, PostgreSQL) many points go in one bulk insert (`_bulk_log`)."""

    MAX_METRICS = 1000

    def __init__(self, run: Any) -> None:
        FakeTracker.__init__(self)
        self._client, self.run_id, self.experiment_id = store_client(), run.info.run_id, run.info.experiment_id
        self.status, self.tags, self.params = run.info.status, dict(run.data.tags), dict(run.data.params)
        self.metric_keys = sorted(run.data.metrics)

    def log_points(self, keys: Any, values: Any, timestamps_ms: Any, steps: Any) -> int:
        """Metric points with their own times (columns of equal length); returns how many were logged."""
        from mlflow.entities import Metric

        points = [(k, float(v), int(t), int(s)) for k, v, t, s in zip(keys, values, timestamps_ms, steps, strict=True)]
        todo = points
        if len(points) > self.MAX_METRICS:
            # MLflow itself checks the run and each key's name on the first point of each key ...
            first: dict[str, int] = {}
            for i, point in enumerate(points):
                first.setdefault(point[0], i)
            self._client.log_batch(self.run_id, metrics=[Metric(*points[i]) for i in first.values()])
            skip = set(first.values())
            todo = [p for i, p in enumerate(points) if i not in skip]
            if _bulk_log(self._client, self.run_id, todo):  # ... and the rest go in at once
                return len(points)
        metrics = [Metric(*p) for p in todo]  # not a SQL store, or a point the run already has
        for i in range(0, len(metrics), self.MAX_METRICS):
            self._client.log_batch(self.run_id, metrics=metrics[i : i + self.MAX_METRICS])
        return len(points)

    def log_params(self, params: dict[str, Any]) -> dict[str, tuple[str, str]]:
        """Params are immutable: logs the new ones; returns {key: (the run's value, the new one)} that differ."""
        values = {k: str(v)[:6000] for k, v in params.items()}
        differ = {k: (self.params[k], v) for k, v in values.items() if k in self.params and self.params[k] != v}
        new = {k: v for k, v in values.items() if k not in self.params}
        if new:
            super().log_params(new)
        return differ

    def set_tags(self, tags: dict[str, Any]) -> None:
        super().set_tags({k: str(v)[:8000] for k, v in tags.items() if v is not None})

    def history(self, keys: list[str] | None = None) -> dict[tuple[str, int], float]:
        """What the run holds: {(metric, step): value} (the first value where a step has several)."""
        out: dict[tuple[str, int], float] = {}
        for key in self.metric_keys if keys is None else keys:
            for m in self._client.get_metric_history(self.run_id, key):
                out.setdefault((key, m.step), m.value)
        return out

    def download(self, artifact: str, dst: str | Path) -> Path | None:
        """An artifact of the run into dst; None when the run has none of that name."""
        try:
            return Path(self._client.download_artifacts(self.run_id, artifact, str(dst)))
        except Exception:  # MLflow raises several types for a missing artifact
            return None

    def terminate(self, status: str, end_ms: int | None = None) -> None:
        self._client.set_terminated(self.run_id, status, end_time=end_ms)
        self.status = status

    @contextlib.contextmanager
    def ended_on_error(self) -> Iterator[None]:
        """An exception inside ends the run FAILED, Ctrl-C or SIGTERM KILLED: never left RUNNING."""
        try:
            yield
        except KeyboardInterrupt:
            self.terminate("KILLED")
            raise
        except BaseException:
            self.terminate("FAILED")
            raise


class RunStore:
    """The runs of one experiment (created when missing): find by tags, get by id, create."""

    def __init__(self, experiment: str) -> None:
        from albert_exp.errors import UserError

        self._client = store_client()
        exp = self._client.get_experiment_by_name(experiment)
        if exp is not None and exp.lifecycle_stage == "deleted":
            raise UserError(
                f"experiment {experiment!r} is deleted",
                fix="restore it (mlflow experiments restore) or pick another --experiment",
            )
        self.experiment_id = exp.experiment_id if exp else _create_experiment(self._client, experiment)

    def find(self, tags: dict[str, str], run_name: str | None = None) -> RunRecord | None:
        """The latest run carrying all `tags` (and named run_name if given)."""
        filt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        if run_name:
            filt += " and attributes.run_name = '{}'".format(run_name.replace("'", "\\'"))
        runs = self._client.search_runs(
            [self.experiment_id], filter_string=filt, order_by=["attributes.start_time DESC"], max_results=1
        )
        return RunRecord(runs[0]) if runs else None

    def get(self, run_id: str, where: str = "--run-id") -> RunRecord:
        from mlflow.exceptions import MlflowException

        from albert_exp.errors import UserError

        try:
            run = self._client.get_run(run_id)
        except MlflowException:
            run = None
        if run is None or run.info.lifecycle_stage == "deleted":
            raise UserError(
                f"no MLflow run {run_id!r} in {tracking_uri()}",
                where=where,
                fix="copy the run id from the MLflow UI or from results.json",
            )
        return RunRecord(run)

    def create(self, run_name: str, start_ms: int | None, tags: dict[str, str]) -> RunRecord:
        return RunRecord(self._client.create_run(self.experiment_id, start_time=start_ms, run_name=run_name, tags=tags))


def set_experiment_tags(experiment_id: str, tags: dict[str, str]) -> None:
    """Experiment tags (its description `mlflow.note.content`, `mlflow.experimentKind`)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for k, v in tags.items():
        client.set_experiment_tag(experiment_id, k, v)


def rename_run(run_id: str, name: str) -> None:
    from mlflow import MlflowClient

    MlflowClient().update_run(run_id, name=name)
