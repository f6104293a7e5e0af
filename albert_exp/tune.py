"""Tune stage: an Optuna study of the fine-tuning learning rate (log scale) and number of epochs.

    albert-exp tune --config experiments/toy.yaml --n-trials 6
    albert-exp tune --config experiments/toy.yaml --storage postgresql://optuna@<db-host>:5432/optuna --worker 1

One MLflow parent run per worker invocation (`tune <study>`); every trial is a nested `finetune` run tagged
`optuna_study` / `optuna_trial` with its params, per-epoch metrics and result. The parent gets the best params
and value, the trials table and Optuna's plots. Seeded TPE sampler (a random start-up point is drawn from the
seed and its trial number, whichever worker draws it), median pruner fed with the per-epoch validation value.

`--jobs N` (config `jobs`; 0: one per GPU, else the cores / finetune.torch_threads) runs N trial processes on
this machine: this one and N-1 workers it starts (`tune.worker` w+1..w+N-1, logs in <workdir>/logs/, runs nested
under this one), stopped with it on Ctrl-C or SIGTERM. A trial's result depends on its parameters and the seed
only; which trials the sampler proposes after the start-up ones depends on what had finished when it asked.

The study lives in an RDB storage (default `sqlite:///optuna.db`; PostgreSQL for several workers on several
machines). `n_trials` is the number of finished (complete or pruned) trials the *study* should reach, so a rerun
continues where a killed one stopped and several workers share the work. A killed worker's running trial stops
sending heartbeats: the next worker to start a trial marks it FAIL, closes its MLflow runs as KILLED and re-queues
its parameters (RetryHeartbeatStaleTrialCallback); the retry resumes from the dead trial's checkpoint directory.

The default study name carries a fingerprint of everything a trial's result depends on (finetune config except
the searched values, model, seed, search space, data files, tokenizer, code commit, tracking store): a rerun
with other inputs starts a new study instead of silently mixing results. The plain fine-tuning config is a trial
of the study (enqueue_base): its first, and one more after a rerun with another learning rate or epochs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from albert_exp import finetune
from albert_exp.config import ExperimentConfig, flatten, to_dict, with_overrides
from albert_exp.errors import UserError
from albert_exp.stage import Context, Stage, StageResult
from albert_exp.tracking import (
    PARENT_RUN_ENV,
    PID,
    close_runs,
    current_run_id,
    owner_alive,
    rename_run,
    run_tags,
    tracking_uri,
    who,
)
from albert_exp.tracking.store import OPTUNA_LOCK_KEY, schema_lock

FINISHED = ("COMPLETE", "PRUNED")


def trial_config(cfg: ExperimentConfig, workdir: Path, learning_rate: float, epochs: int) -> ExperimentConfig:
    """The fine-tuning config of one trial: its own workdir (its own checkpoint), the shared data and tokenizer."""
    from albert_exp.finetune import pinned

    t = pinned(cfg, workdir)
    searched = {"learning_rate": learning_rate, "epochs": epochs, "select_metric": cfg.tune_objective}
    return with_overrides(t, {f"finetune.{k}": v for k, v in searched.items()})


def study_name(cfg: ExperimentConfig) -> str:
    """`<name>-<key>`: the stage identity (albert_exp/identity.py) of the search: the fine-tuning settings except
    the searched ones, the search space, the seed, the digests of the data, tokenizer and model, the code
    version, and the tracking store. A rerun with other inputs starts a new study instead of mixing results."""
    if cfg.tune.study_name:
        return cfg.tune.study_name
    from albert_exp.digest import stage_key
    from albert_exp.finetune import inputs as finetune_inputs
    from albert_exp.identity import input_digests, settings

    fixed = settings(cfg, "finetune")
    sections = {
        "finetune": {k: v for k, v in fixed.items() if k not in ("learning_rate", "epochs")},
        "space": {k: getattr(cfg.tune, k) for k in ("lr_min", "lr_max", "epochs_min", "epochs_max")}
        | {"objective": cfg.tune_objective},
        "model": to_dict(cfg.model),
        "seed": cfg.seed,
        "name": cfg.name,
    }
    inputs = {**input_digests(finetune_inputs(cfg)), "tracking": tracking_uri()}
    return f"{cfg.name}-{stage_key('tune', sections, inputs)[:10]}"


def _masked(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: show the scheme only
        return url.split("://", 1)[0] + "://..."


def close_trial_runs(study_name: str, trial: Any, reason: str) -> list[str]:
    """End the MLflow runs of a dead trial (its finetune run and its worker's parent run) as KILLED; a trial
    killed before its first epoch has not recorded its run id yet: its run is found by its tags."""
    ids = {trial.user_attrs.get("mlflow_run_id"), trial.user_attrs.get("mlflow_parent_run_id")} - {None}
    tags = {"optuna_study": study_name, "optuna_trial": str(trial.number)}
    return close_runs(ids, trial.user_attrs.get("mlflow_experiment_id"), tags, reason)


class CloseRunsAndRetry:
    """Heartbeat-stale trial callback: close the dead trial's MLflow runs, then re-queue its parameters."""

    def __init__(self, max_retry: int) -> None:
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)

    def __call__(self, study: Any, trial: Any, why: str = "stale heartbeat: its worker died") -> None:
        closed = close_trial_runs(study.study_name, trial, why)
        print(f"trial {trial.number} ({why}): marked FAIL, MLflow runs {closed} marked KILLED, retried")
        self.retry(study, trial)


def fail_dead_trials(study: Any) -> list[int]:
    """Fail and retry the RUNNING trials whose worker process on this host is gone, at once: a worker rerun right
    after a kill need not wait for the heartbeat grace period (which only knows about other hosts' workers)."""
    import copy

    import optuna
    from optuna.trial import TrialState

    storage, failed = study._storage, []
    for tr in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = tr.user_attrs.get("owner") or {}
        if owner_alive(owner) is not False:
            continue
        try:
            if storage.set_trial_state_values(tr._trial_id, state=TrialState.FAIL):
                failed.append(tr._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker failed it first
    callback = storage.get_heartbeat_stale_trial_callback()
    for trial_id in failed:
        dead = copy.deepcopy(storage.get_trial(trial_id))
        why = f"its worker (pid {dead.user_attrs['owner'].get(PID)}) is gone"
        if callback is not None:
            callback(study, dead, why)
    return [storage.get_trial(i).number for i in failed]


SQLITE_BUSY_S = 60  # how long a sqlite writer waits for another's lock (default 5 s: parallel trials time out)


def open_study(cfg: ExperimentConfig, name: str) -> Any:
    """The study `name` in tune.storage, created if new. Workers started together race to create Optuna's
    tables and the study in an empty database (PostgreSQL: DuplicateTable, UniqueViolation), so that runs under
    a lock (an advisory lock in PostgreSQL, a file lock beside a sqlite file): the first creates, the others
    find them."""
    import optuna

    t = cfg.tune
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: "experimental"
    sqlite = t.storage.startswith("sqlite")
    with schema_lock(t.storage, OPTUNA_LOCK_KEY):
        storage = optuna.storages.RDBStorage(
            t.storage,
            engine_kwargs={"connect_args": {"timeout": SQLITE_BUSY_S}} if sqlite else None,
            heartbeat_interval=t.heartbeat_s,
            grace_period=t.grace_s,
            heartbeat_stale_trial_callback=CloseRunsAndRetry(t.max_retry),
        )
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=_sampler(cfg),
            pruner=_pruner(cfg),
            load_if_exists=True,
            direction="maximize",
        )
    return study


def _sampler(cfg: ExperimentConfig) -> Any:
    """TPE (constant liar: running trials count as tried), whose random start-up points are a function of the
    seed and the trial number alone, so they are the same whichever worker draws them and in whatever order
    (one sampler seed per worker made them depend on which worker asked first); a rerun's new trials have new
    numbers, hence new points."""
    import zlib

    import optuna

    class TrialSeeded(optuna.samplers.TPESampler):
        def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
            if trial.number >= startup:
                return super().sample_independent(study, trial, name, distribution)
            seed = zlib.crc32(f"{cfg.seed}/{trial.number}/{name}".encode())
            return optuna.samplers.RandomSampler(seed).sample_independent(study, trial, name, distribution)

    startup = max(2, min(10, cfg.tune.n_trials // 3))
    return TrialSeeded(seed=cfg.seed + 1000 * cfg.tune.worker, constant_liar=True, n_startup_trials=startup)


def _pruner(cfg: ExperimentConfig) -> Any:
    import optuna

    t = cfg.tune
    return optuna.pruners.MedianPruner(n_startup_trials=t.pruner_startup_trials, n_warmup_steps=t.pruner_warmup_epochs)


def checked_study(cfg: ExperimentConfig, name: str) -> Any:
    """The study, or one line saying what is wrong with tune.storage (a missing driver, a wrong URL, a database
    that does not answer)."""
    storage = cfg.tune.storage
    if storage.startswith("postgresql"):
        from albert_exp.extras import require

        require("postgres", "a PostgreSQL Optuna storage (tune.storage)")
    try:
        return open_study(cfg, name)
    except (ImportError, ModuleNotFoundError) as exc:
        raise UserError(
            f"cannot open the Optuna storage: {exc}",
            where="tune.storage",
            fix="install the database driver the storage URL names",
        ) from None
    except Exception as exc:  # a wrong host, password or database
        if type(exc).__module__.startswith("sqlalchemy"):
            raise UserError(
                f"cannot open the Optuna storage {_masked(storage)}: {str(exc).splitlines()[0]}",
                where="tune.storage",
                fix="check the URL, and that the database server runs",
            ) from None
        raise


def _counts(study: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for tr in study.get_trials(deepcopy=False):
        out[tr.state.name] = out.get(tr.state.name, 0) + 1
    return out


def trial_run_name(number: int, lr: float, epochs: int, base: bool = False) -> str:
    """`trial 3 lr=3.5e-04 ep=6` (`base` for the enqueued fine-tuning config; ` pruned` is added when pruned)."""
    return f"trial {number} lr={lr:.2g} ep={epochs}" + (" base" if base else "")


def base_in_space(cfg: ExperimentConfig) -> bool:
    f, t = cfg.finetune, cfg.tune
    return t.lr_min <= f.learning_rate <= t.lr_max and t.epochs_min <= f.epochs <= t.epochs_max


def enqueue_base(study: Any, cfg: ExperimentConfig) -> bool:
    """The plain fine-tuning config is one of the study's trials, so the search is never worse than it: a new
    study's first; after a rerun with another finetune.learning_rate or epochs (the same study: those two are
    searched, not part of its name) one more. Only inside the search space (a space that leaves it out is a
    choice), and not when the study holds these parameters already (in any state). True when queued."""
    url = getattr(study._storage, "url", None)  # an RDB storage's (an in-memory study has no other workers)
    with schema_lock(url, OPTUNA_LOCK_KEY) if url else contextlib.nullcontext():  # workers started together:
        if holds_base(study, cfg):  # the first queues it, the others find it
            return False
        study.enqueue_trial(_base(cfg))
    return True


def holds_base(study: Any, cfg: ExperimentConfig) -> bool:
    """Whether the study has the fine-tuning config among its trials, queued, running or finished (or the config
    lies outside the search space, so it has nothing to add)."""
    return not base_in_space(cfg) or trial_with(study, _base(cfg)) is not None


def _base(cfg: ExperimentConfig) -> dict[str, Any]:
    return {"learning_rate": cfg.finetune.learning_rate, "epochs": cfg.finetune.epochs}


def duplicate_of(study: Any, params: dict[str, Any]) -> int | None:
    """The number of a finished (complete or pruned) trial with exactly these parameters, if any: a sampler whose
    seed repeats (a rerun, a second worker) must not train the same point twice by accident."""
    import optuna

    return trial_with(study, params, (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))


def trial_with(study: Any, params: dict[str, Any], states: tuple | None = None) -> int | None:
    """The number of a trial (in `states`, default any) with exactly these parameters; a queued trial has no
    params yet, only the fixed ones it was queued with."""
    for t in study.get_trials(deepcopy=False, states=states):
        if (t.params or t.system_attrs.get("fixed_params")) == params:
            return t.number
    return None


def make_objective(cfg: ExperimentConfig, study_dir: Path, parent: Any, run_stage: Any, known: Any = None) -> Any:
    """Each trial is a `finetune` stage in its own workdir, run by the executor (`run_stage`): resumable, one
    MLflow run, results.json. A trial whose fine-tuning identity is that of `known` (the `finetune` stage's
    result) is that run: recorded, per-epoch values included, instead of trained again."""
    import optuna

    from albert_exp.identity import key_of

    t, goal = cfg.tune, cfg.tune_objective

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("learning_rate", t.lr_min, t.lr_max, log=True)
        epochs = trial.suggest_int("epochs", t.epochs_min, t.epochs_max)
        # A retry of a dead trial reuses its directory, so fine-tuning resumes from its last epoch checkpoint.
        origin = trial.storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        same = duplicate_of(trial.study, trial.params) if origin is None else None
        if same is not None:  # recorded as pruned, with the reason, instead of training the same point again
            trial.set_user_attr("duplicate_of", same)
            raise optuna.TrialPruned(f"the same parameters as trial {same} (lr={lr:.3g}, epochs={epochs})")
        tcfg = trial_config(cfg, study_dir / f"trial_{trial.number if origin is None else origin}", lr, epochs)
        trial.set_user_attr("mlflow_parent_run_id", parent.run_id)
        trial.set_user_attr("mlflow_experiment_id", parent.experiment_id)
        trial.set_user_attr("worker", t.worker)
        trial.set_user_attr("owner", who())  # host and pid: a rerun on this host fails the trial if they are gone

        def on_epoch(epoch: int, val: dict[str, float]) -> None:
            if "mlflow_run_id" not in trial.user_attrs and current_run_id():
                trial.set_user_attr("mlflow_run_id", current_run_id())
            trial.report(val[goal], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: val/{goal}={val[goal]:.4f} below the median")

        if known is not None and f"val/{goal}" in known.values and key_of(finetune.STAGE, tcfg) == known.key:
            return _same_as(trial, known, goal)
        tags = {"optuna_study": trial.study.study_name, "optuna_trial": trial.number, "optuna_worker": t.worker}
        if origin is not None:
            tags["optuna_retry_of"] = origin
        base = "fixed_params" in trial.storage.get_trial_system_attrs(trial._trial_id)  # enqueued base config
        name = trial_run_name(trial.number, lr, epochs, base=base)
        try:
            with run_tags(tags, early_stop=(optuna.TrialPruned,)):
                res = run_stage("finetune", tcfg, {"on_epoch": on_epoch, "label": f"trial {trial.number}"})
        except optuna.TrialPruned:
            name += " pruned"
            raise
        finally:  # the run name tells the trials apart in the UI's table (they would all be `finetune from ...`)
            if trial.user_attrs.get("mlflow_run_id"):
                rename_run(trial.user_attrs["mlflow_run_id"], name)
        trial.set_user_attr("mlflow_run_id", res.run_id)
        for key in (
            "model_uri",
            "hf_model_uri",
            "dataset_digest",
            "best_epoch",
            "test/token_accuracy",
            "test/phrase_f1",
        ):
            if key in res.values:
                trial.set_user_attr(key, res[key])
        return float(res[f"val/{goal}"])

    return objective


def _same_as(trial: Any, run: StageResult, objective: str) -> float:
    """Record the finished fine-tuning run `run` as this trial: its per-epoch values (what the pruner compares
    other trials with), its run and model, its result."""
    for h in run["val_history"]:
        trial.report(h[f"val/{objective}"], h["epoch"])
    trial.set_user_attr("mlflow_run_id", run.run_id)
    trial.set_user_attr("same_as_run", run.run_id)
    for key in ("model_uri", "hf_model_uri", "dataset_digest", "best_epoch", "test/token_accuracy", "test/phrase_f1"):
        if key in run.values:
            trial.set_user_attr(key, run[key])
    print(f"trial {trial.number}: the finetune run {run.run_id} has these settings and inputs: its result, not trained")
    return float(run[f"val/{objective}"])


def _log_plots(study: Any, tracker: Any) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    complete = [tr for tr in study.trials if tr.state.name == "COMPLETE"]
    plots = {"optimization_history": vis.plot_optimization_history, "intermediate_values": vis.plot_intermediate_values}
    if len({(tr.params["learning_rate"], tr.params["epochs"]) for tr in complete}) >= 2:
        plots["param_importances"] = vis.plot_param_importances
        plots["contour_lr_epochs"] = lambda s: vis.plot_contour(s, params=["learning_rate", "epochs"])
    logged = []
    for name, fn in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                ax = fn(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. all values equal: no importance
            print(f"plot {name} skipped: {exc}")
            continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()  # axis labels inside the saved image (param_importances' y label was clipped)
        tracker.log_figure(fig, f"plots/{name}.png")
        plt.close(fig)
        logged.append(name)
    return logged


def prepare(ctx: Context) -> Any:
    """The tokenizer and the three CSVs checked (a bad CSV is one line now, not a failed trial's traceback from
    Optuna), then the study opened, its dead trials closed, the fine-tuning config queued as a trial."""
    from albert_exp.data import read_labelled_csv
    from albert_exp.finetune import data_paths

    cfg = ctx.cfg
    t, f = cfg.tune, cfg.finetune
    if not (data_paths(cfg)["tokenizer"] / "tokenizer_config.json").is_file():
        raise UserError(
            "no tokenizer found",
            where=str(data_paths(cfg)["tokenizer"]),
            fix="run `albert-exp vocab` first, or set finetune.tokenizer_dir / finetune.model_dir",
        )
    for split in ("train", "val", "test"):
        read_labelled_csv(data_paths(cfg)[split], f.text_column, f.phrase_column, f.phrase_separator)
    import optuna

    name = ctx.key if not ctx.fresh else f"{ctx.key}-{time.strftime('%Y%m%dT%H%M%S')}"  # --rerun: a new study
    study = checked_study(cfg, name)
    optuna.storages.fail_stale_trials(study)  # a rerun after a kill closes the dead trial first
    fail_dead_trials(study)  # ... and at once where the dead worker ran on this host
    done = sum(_counts(study).get(s, 0) for s in FINISHED)
    remaining = max(0, t.n_trials - done)
    print(f"study {name} in {_masked(t.storage)}: {done} finished trials, {remaining} to run (worker {t.worker})")
    if enqueue_base(study, cfg):
        print(f"queued the finetune config as a trial: lr={cfg.finetune.learning_rate:g} epochs={cfg.finetune.epochs}")
        remaining = max(remaining, 1)  # into a study that had run its n_trials: one more
    return study, remaining, done


def params(ctx: Context) -> dict[str, Any]:
    """The search space as params; the fine-tuning settings every trial shares, without the searched two (the
    base values read as if they were searched)."""
    cfg, t = ctx.cfg, ctx.cfg.tune
    fixed = {k: v for k, v in to_dict(cfg.finetune).items() if k not in ("learning_rate", "epochs")}
    return {
        **flatten(fixed, "finetune."),
        "space.learning_rate": f"log-uniform [{t.lr_min:g}, {t.lr_max:g}]",
        "space.epochs": f"int [{t.epochs_min}, {t.epochs_max}]",
        "space.first_trial": (
            f"lr={cfg.finetune.learning_rate:g} epochs={cfg.finetune.epochs} (the finetune config)"
            if base_in_space(cfg)
            else "none: the finetune config is outside the space"
        ),
        "derived.study_name": ctx.prepared[0].study_name,
    }


def compute(ctx: Context) -> dict[str, Any]:
    cfg, tracker = ctx.cfg, ctx.tracker
    t = cfg.tune
    study, remaining, done = ctx.prepared
    name = study.study_name
    study_dir = cfg.stage_dir("tune") / name
    tracker.set_tags({"optuna_study": name, "optuna_storage": _masked(t.storage), "optuna_worker": t.worker})
    mine: list[int] = []

    def after_trial(study: Any, trial: Any) -> None:
        mine.append(trial.number)
        _log_trial(study, trial, tracker, cfg.tune_objective)
        states = [tr.state.name for tr in study.get_trials(deepcopy=False)]
        # done, whichever worker finished it, or about to be with the trials other workers are running
        if sum(s in FINISHED for s in states) + states.count("RUNNING") >= t.n_trials:
            study.stop()

    if not remaining:
        print(f"study {name} already has {done} finished trials (n_trials={t.n_trials}): reporting its best")
        return _report(cfg, study, study_dir, tracker, mine)
    workers = start_workers(cfg, name, min(trial_workers(cfg), remaining), tracker.run_id)
    if workers:  # this process is worker 0 of them: its share of the cores, as theirs (torch_threads wins)
        from albert_exp.devices import share_cores

        share_cores(len(workers) + 1)
    try:
        study.optimize(
            make_objective(cfg, study_dir, tracker, ctx.run, ctx.upstream.get("finetune")),
            n_trials=remaining,
            timeout=t.timeout_s,
            callbacks=[after_trial],
            gc_after_trial=True,
        )
        wait_workers(workers, tracker)
    except BaseException:  # Ctrl-C, SIGTERM, a failed trial: the other workers stop too, their runs KILLED
        stop_workers(workers)
        raise
    for tr in sorted(study.get_trials(deepcopy=False), key=lambda tr: tr.number):
        if workers and tr.number not in mine and tr.state.name in FINISHED:  # the other workers' trials too
            _log_trial(study, tr, tracker, cfg.tune_objective)
    return _report(cfg, study, study_dir, tracker, mine)


def trial_workers(cfg: ExperimentConfig) -> int:
    """Trial processes (and the curve's point processes) on this machine: `jobs`, or (0) one per GPU, else the cores
    divided by a fine-tuning's torch threads (1 where torch takes every core): devices.parallel_slots, as `main
    --jobs` counts stages."""
    from albert_exp.devices import parallel_slots

    return cfg.jobs or parallel_slots(cfg.finetune.torch_threads)


# The file the parent `main --jobs` reads this process's result from (scheduler.RESULT_FILE): not a worker's.
RESULT_FILE_ENV = "ALBERT_EXP_RESULT_FILE"


def start_workers(cfg: ExperimentConfig, study: str, n: int, run_id: str | None) -> list[Any]:
    """Workers 1..n-1 of this search (this process is the first): `python -m albert_exp tune` with the same
    config and overrides, the study pinned by name, `tune.worker` = this worker's + k (so a machine started
    with --worker w --jobs n holds workers w..w+n-1: give the next machine --worker w+n), one trial process
    each, their runs nested under this one; each in its own process group (Ctrl-C reaches this process alone,
    which stops them) and killed if this process dies. Their console output goes to <workdir>/logs/."""
    if n <= 1 or run_id is None:
        return []
    from functools import partial

    from albert_exp.devices import side_by_side_env
    from albert_exp.processes import die_with_parent

    logs = cfg.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "albert_exp", "tune"]
    base += [] if cfg.source.startswith("<") else ["--config", cfg.source]
    for override in cfg.overrides:
        base += ["--set", override]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", RESULT_FILE_ENV)}
    # the store this process logs to, however it was set (a test's set_tracking_uri, a relative default)
    env.update(
        {PARENT_RUN_ENV: run_id, "MLFLOW_TRACKING_URI": tracking_uri(), "TQDM_DISABLE": env.get("TQDM_DISABLE", "1")}
    )
    workers = []
    for k in range(1, n):
        w = cfg.tune.worker + k
        log = logs / f"tune-worker{w}.log"
        devices = side_by_side_env(k, n)
        with open(log, "w") as fh:
            proc = subprocess.Popen(
                [*base, "--set", f"tune.worker={w} tune.study_name={study} jobs=1"],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**env, **devices},
                start_new_session=True,
                preexec_fn=partial(die_with_parent, os.getpid()),
            )
        workers.append((w, proc, log))
    print(f"trial workers {', '.join(str(w) for w, _, _ in workers)} started beside this one (logs: {logs})")
    return workers


def wait_workers(workers: list[Any], tracker: Any) -> None:
    """Wait for the other workers; their logs go into this run. A failed worker is one line naming its log."""
    failed = []
    for w, proc, log in workers:
        proc.wait()
        tracker.log_artifact(log, "logs")
        if proc.returncode:
            lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
            errors = [x for x in lines if x.startswith("error:")]
            failed.append((w, log, (errors or lines or [f"exit status {proc.returncode}"])[-1]))
    if failed:
        w, log, why = failed[0]
        raise UserError(
            f"tune worker {w} failed: {why}", where=str(log), fix="read its log; a rerun of `tune` continues the study"
        )


def stop_workers(workers: list[Any], grace_s: float = 60) -> None:
    """SIGTERM to each worker's process group (each ends its runs KILLED, as after Ctrl-C), then wait; one that
    does not end within `grace_s` is killed."""
    for _, proc, _ in workers:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.time() + grace_s
    for _, proc, _ in workers:
        try:
            proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _log_trial(study: Any, trial: Any, tracker: Any, objective: str) -> None:
    """On the worker's run, at step = trial number: the trial's value if it completed (a pruned trial's value is
    its last epoch's, not a result), and the best value the study held when it finished (`best/val_<objective>`:
    with parallel workers, trials finish out of number order)."""
    from optuna.trial import TrialState

    values = {}
    if trial.state == TrialState.COMPLETE:
        values[f"trial/val_{objective}"] = trial.value
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = [tr.value for tr in complete if tr.datetime_complete <= trial.datetime_complete]
    if best:
        values[f"best/val_{objective}"] = max(best)
    if values:
        tracker.log_metrics(values, step=trial.number)


def _report(cfg: ExperimentConfig, study: Any, study_dir: Path, tracker: Any, mine: list[int]) -> dict[str, Any]:
    """The best trial, the counts, the trials table and Optuna's plots, on the worker's run."""
    t, name = cfg.tune, study.study_name
    counts = _counts(study)
    complete = [tr for tr in study.trials if tr.state.name == "COMPLETE"]
    if not complete:
        raise UserError(
            f"no trial of study {name} completed ({counts})",
            where="tune",
            fix="look at the failed trials' MLflow runs; raise tune.n_trials",
        )
    best = study.best_trial
    results = {
        "study_name": name,
        "storage": _masked(t.storage),
        "objective": f"val/{cfg.tune_objective}",
        "best_trial": best.number,
        "best_params": best.params,
        "best_value": best.value,
        **{k: v for k, v in best.user_attrs.items() if k not in ("worker", "owner", "mlflow_parent_run_id")},
        "best_trial_run_id": best.user_attrs.get("mlflow_run_id"),
        "trials": counts,
        "n_pruned": counts.get("PRUNED", 0),
        "n_complete": counts.get("COMPLETE", 0),
        "this_worker_trials": mine,
        "study_dir": str(study_dir),
    }
    tracker.log_params({f"best.{k}": v for k, v in best.params.items()} | {"best.trial": best.number})
    # the running best's last point, at the step of the trial that finished last (one point per trial)
    last = max((tr for tr in study.trials if tr.state.name in FINISHED), key=lambda tr: tr.datetime_complete).number
    tracker.log_metrics({f"best/val_{cfg.tune_objective}": best.value}, step=last)
    tracker.log_metrics(
        {
            "tune/complete": len(complete),
            "tune/pruned": counts.get("PRUNED", 0),
            "tune/failed": counts.get("FAIL", 0),
            **{f"best/{k}": v for k, v in best.user_attrs.items() if k.startswith("test/")},
        },
        step=0,
    )
    tracker.set_tags(
        {
            "best_model_uri": best.user_attrs.get("model_uri", ""),
            "dataset_digest": best.user_attrs.get("dataset_digest", ""),
        }
    )
    df = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    study_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(study_dir / "trials.csv", index=False)
    tracker.log_artifact(study_dir / "trials.csv")
    results["plots"] = _log_plots(study, tracker)
    print(
        f"best trial {best.number}: lr={best.params['learning_rate']:.3g} epochs={best.params['epochs']} "
        f"val/{cfg.tune_objective}={best.value:.4f}; {counts}"
    )
    return results


def reusable(cfg: ExperimentConfig, upstream: Any, results: dict[str, Any]) -> bool:
    """A finished search of the same study is reused while the study holds the fine-tuning config as a trial
    (a rerun with another finetune.learning_rate or epochs adds that trial instead) and has its n_trials."""
    if cfg.tune.study_name:  # a named (shared) study: every invocation is a worker
        return False
    study = checked_study(cfg, results["study_name"])
    finished = sum(_counts(study).get(s, 0) for s in FINISHED)
    return holds_base(study, cfg) and finished >= cfg.tune.n_trials


STAGE = Stage(
    name="tune",
    section="tune",
    compute=compute,
    inputs=lambda cfg: {},
    needs=lambda cfg: finetune.needs(cfg),
    uses=lambda cfg: ("finetune",),  # its run is the base trial, when the settings and inputs are the same
    configure=lambda cfg, upstream: finetune.configure(cfg, upstream),
    prepare=prepare,
    params=params,
    describe=lambda cfg: study_name(cfg),
    key=lambda cfg, upstream: study_name(cfg),
    has_output=False,
    reusable=reusable,
)
