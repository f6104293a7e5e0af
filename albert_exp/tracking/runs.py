"""The run lifecycle: every stage opens its MLflow run with `stage_run(cfg, stage, description)`.

The run is a child of the enclosing stage run (the `main` pipeline or a tuning study), or the run `mlflow run`
created (MLFLOW_RUN_ID), or a new run in the experiment named by the config; `resume_run_id` reattaches to the
run a checkpoint was written by. The run gets the conventional tags, who runs it (host, pid, start), the
resolved config (flattened params and a YAML artifact), and ends FAILED on an exception, KILLED on Ctrl-C or
SIGTERM: never left RUNNING by a live process. A process killed with SIGKILL cannot end its run: the next
`stage_run` on the same store marks runs of dead processes on this host KILLED with a reason
(`sweep_dead_runs`). `offline()` makes every `stage_run` yield a FakeTracker, so a stage's `run(cfg)` can be
tested without a store.

Also here: closing a dead Optuna trial's runs (`close_runs`), `results.json` (`write_results`), and reading
runs back for reuse and lineage (`get_run`, `finished_run`, `upstream_tags`).
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
from albert_exp.tracking.store import create_experiment, store_client, tracking_uri
from albert_exp.tracking.trackers import FakeTracker, MlflowTracker, Tracker

# Tags that say who runs a stage: `sweep_dead_runs` closes a RUNNING run whose process is gone.
HOST, PID, PID_START = "albert_exp.host", "albert_exp.pid", "albert_exp.pid_start"
KILLED_REASON = "killed_reason"
KEY = "albert_exp.key"  # the stage identity of the output a run computed (albert_exp/identity.py)
PARENT = "albert_exp.resumed_under"  # the parent run of the invocation that resumed a run
REUSED = "reused_run_id"  # on a stage run of `main` that reused an earlier run's output instead of computing
RUN_FILE = "run.json"  # in a stage's work directory: the run computing it
UPSTREAM = "upstream."  # tag prefix: upstream.<stage> = the run that produced an input
RESUMED_AFTER = "albert_exp.resumed_after"  # on a run a rerun continued: why it had stopped
PRUNED = "pruned"  # "true" on a run stopped early on purpose (Optuna pruner): FINISHED, but not a result


def git_commit() -> str:
    """The code version as a tag: the commit, `-dirty+<hash of the changes>` when tracked files changed."""
    return code_version()


# The innermost open stage run of this context (a stage's run is the child of its enclosing one) and the tags
# and early-stop exceptions every stage run opened in this context gets (a tuning study tags each trial's
# finetune run with its study and trial number, so a run left by a killed worker can be found and closed).
_CURRENT: contextvars.ContextVar[Tracker | None] = contextvars.ContextVar("albert_exp_run", default=None)
_EXTRA_TAGS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("albert_exp_tags", default=None)
_EARLY_STOP: contextvars.ContextVar[tuple[type, ...]] = contextvars.ContextVar("albert_exp_stop", default=())
# Offline: the list that collects the FakeTrackers stage runs yield instead of MLflow runs.
_OFFLINE: contextvars.ContextVar[list[FakeTracker] | None] = contextvars.ContextVar("albert_exp_offline", default=None)


@contextlib.contextmanager
def run_tags(tags: dict[str, Any], early_stop: tuple[type, ...] = ()) -> Iterator[None]:
    """Stage runs opened inside get `tags`; an exception of an `early_stop` type ends them FINISHED with the tag
    `pruned=true`: stopped early on purpose (an Optuna pruner), not a failure. MLflow has no PRUNED status, and
    KILLED shows red in the UI as if the run had crashed."""
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


def _log_lineage(tracker: Tracker, inputs: dict[str, tuple[Path | list[Path], str]]) -> None:
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


def experiment_id(client: Any, name: str) -> str:
    """The experiment a new run goes into: MLFLOW_EXPERIMENT_ID or MLFLOW_EXPERIMENT_NAME when set (as `mlflow
    run --experiment-name` and users set them), else the experiment YAML's `name` (created when new)."""
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or name
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else create_experiment(client, name)


def _open_run(cfg: ExperimentConfig, run_name: str, parent: Tracker | None, resume_run_id: str | None) -> str:
    """The id of the run to log into: a resumed one, the one `mlflow run` made, or a new (child) run. A new run
    is created with the tags naming its process, so the dead-run sweep can close it whatever fails next."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    client = store_client()
    if resume_run_id:
        return resume_run_id
    env_run = os.environ.pop("MLFLOW_RUN_ID", None) if parent is None else None
    if env_run:  # `mlflow run` made it (with a random name): ours names it as our runs are named
        client.set_tag(env_run, MLFLOW_RUN_NAME, run_name)
        return env_run
    if parent is not None and parent.experiment_id:
        exp_id = parent.experiment_id
    else:
        exp_id = experiment_id(client, cfg.name)
    tags = {MLFLOW_RUN_NAME: run_name, **who()}
    if parent is not None and parent.run_id:
        tags[MLFLOW_PARENT_RUN_ID] = parent.run_id
    return client.create_run(exp_id, tags=tags, run_name=run_name).info.run_id


def _log_resolved_config(
    cfg: ExperimentConfig, stage: str, section: str | None, extra: dict[str, Any] | None, tracker: Tracker
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
    cfg: ExperimentConfig, stage: str, output: StageOutput | None, parent: Tracker | None, resumed: bool
) -> dict[str, str]:
    tags = {"stage": stage, "experiment_config": cfg.source, "git_commit": git_commit()}
    if output is not None:
        tags.update({KEY: output.key, "output_dir": str(output.done)})
    if resumed and parent is not None and parent.run_id:
        tags[PARENT] = parent.run_id
    tags.update(_EXTRA_TAGS.get() or {})
    return tags


def _final_status(exc: BaseException | None, tracker: Tracker) -> str:
    """How the run ends: FINISHED (also when pruned by Optuna: tagged `pruned=true`), KILLED (interrupted) or
    FAILED."""
    if exc is None:
        return "FINISHED"
    if isinstance(exc, KeyboardInterrupt):
        return "KILLED"
    if isinstance(exc, Exception) and isinstance(exc, _EARLY_STOP.get()):  # stopped early on purpose
        tracker.set_tags({PRUNED: "true"})
        return "FINISHED"
    return "FAILED"


def _close_run(run_id: str, status: str) -> None:
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        mlflow.end_run(status=status)
    else:
        store_client().set_terminated(run_id, status=status)


PARENT_RUN_ENV = "ALBERT_EXP_PARENT_RUN_ID"  # set by `main --jobs` for the stage processes it starts


def _parent_from_env() -> MlflowTracker | None:
    """The run of `main` that started this stage process (albert_exp/scheduler.py), taken once: the stage's
    run nests under it, the runs the stage opens nest under the stage's."""
    run_id = os.environ.pop(PARENT_RUN_ENV, None)
    return MlflowTracker(run_id) if run_id else None


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
) -> Iterator[Tracker]:
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

    parent = _CURRENT.get() or _parent_from_env()
    if output is not None and resume_run_id is None:
        resume_run_id = _recorded_run(output.work)
    run_id: str | None = None
    error: BaseException | None = None
    try:
        with signals_as_interrupt():  # a scheduler's SIGTERM closes the run as KILLED
            with interrupts_deferred():  # a SIGTERM while the run is created waits until it can close it
                run_id = _open_run(cfg, f"{stage} {description}".strip(), parent, resume_run_id)
                tracker = MlflowTracker(run_id)
                token = _CURRENT.set(tracker)
            tracker.set_tags(who())  # (a resumed run, or the one `mlflow run` made, names its new process)
            if resume_run_id:
                _note_resume(tracker)
            if output is not None:
                (output.work / RUN_FILE).write_text(json.dumps({"run_id": run_id}))
            if parent is None:  # (a stage `main --jobs` started: its main swept already)
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
        if run_id is not None:
            _CURRENT.reset(token)
            with interrupts_deferred():  # a SIGTERM while the run ends waits until it has ended
                _close_run(run_id, _final_status(error, tracker))


def write_results(out_dir: str | Path, results: dict[str, Any], tracker: Tracker | None = None) -> Path:
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
    """The run `run_id` if this store has it and it FINISHED (the run a complete output names as its maker); a
    pruned run ends FINISHED too but computed no result."""
    run = get_run(run_id) if run_id else None
    ok = run is not None and run.status == "FINISHED" and run.tags.get(PRUNED) != "true"
    return run if ok else None


def run_url(run: RunView) -> str:
    """Where the run is: the UI's address for an http store, else the store URI and the run's path in it."""
    uri = tracking_uri()
    if uri.startswith("http"):
        return f"{uri.rstrip('/')}/#/experiments/{run.experiment_id}/runs/{run.run_id}"
    return f"{uri} experiment {run.experiment_id} run {run.run_id}"


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM (kill, timeout, docker stop, systemd) raises KeyboardInterrupt as Ctrl-C does,
    so the caller's wrap-up runs; a second signal during that wrap-up is ignored."""

    def interrupt(signum: int, frame: Any) -> None:
        if _Deferred.depth:  # a run is being opened or closed: raised when that is done
            _Deferred.pending = signum
            return
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


class _Deferred:
    """A SIGTERM held back by interrupts_deferred (signal handlers run in the main thread: one state a process)."""

    depth = 0
    pending: int | None = None


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Inside the block the KeyboardInterrupt of signals_as_interrupt waits, and is raised when the block ends: a
    run is never cut between its creation and its guard, or half way through being ended (either would leave it
    RUNNING while its process lives on to exit)."""
    _Deferred.depth += 1
    try:
        yield
    finally:
        _Deferred.depth -= 1
    if _Deferred.depth == 0 and _Deferred.pending is not None:
        signum, _Deferred.pending = _Deferred.pending, None
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as after any interrupt: the wrap-up is not cut again
        raise KeyboardInterrupt(f"signal {signum}")


def set_experiment_tags(experiment_id: str, tags: dict[str, str]) -> None:
    """Experiment tags (its description `mlflow.note.content`, `mlflow.experimentKind`)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for k, v in tags.items():
        client.set_experiment_tag(experiment_id, k, v)


def rename_run(run_id: str, name: str) -> None:
    from mlflow import MlflowClient

    MlflowClient().update_run(run_id, name=name)
