"""Tracking behind a small interface: `MlflowTracker` for real runs, `NoopTracker` for tests and non-zero ranks.

Every stage opens its run with `stage_run(cfg, stage, description)`: a nested run under the active parent
(the `main` pipeline or a tuning study), or the run `mlflow run` created (MLFLOW_RUN_ID), or a new run in the
experiment named by the config. The run gets the conventional tags, the resolved config (flattened params and
a YAML artifact), and ends FAILED on an exception, KILLED on Ctrl-C or SIGTERM: never left RUNNING.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from albert_exp.config import ExperimentConfig, flatten, to_dict, to_yaml


class NoopTracker:
    """Same interface, records nothing (tests, non-zero ranks). Keeps the last metrics for inspection."""

    run_id: str | None = None
    artifact_uri: str | None = None

    def __init__(self) -> None:
        self.metrics: dict[str, list[tuple[int, float]]] = {}

    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_dict(self, data: dict, artifact_file: str) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_figure(self, figure: Any, artifact_file: str) -> None: ...
    def log_input(self, df: Any, name: str, source: str, context: str) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.metrics.setdefault(k, []).append((step, float(v)))


class MlflowTracker(NoopTracker):
    """Thin wrapper over the active MLflow run; every metric carries an explicit step."""

    def __init__(self, run: Any) -> None:
        super().__init__()
        import mlflow

        self._mlflow = mlflow
        self.run_id = run.info.run_id
        self.artifact_uri = run.info.artifact_uri

    def log_params(self, params: dict[str, Any]) -> None:
        # MLflow caps a param value at 6000 characters; the full config is also logged as YAML.
        self._mlflow.log_params({k: ("" if v is None else str(v))[:6000] for k, v in params.items()})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        super().log_metrics(metrics, step)
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path)

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifacts(str(path), artifact_path)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        self._mlflow.log_dict(data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._mlflow.log_text(text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self._mlflow.log_figure(figure, artifact_file)

    def log_input(self, df: Any, name: str, source: str, context: str) -> None:
        import mlflow.data
        from mlflow.data.dataset_source_registry import get_registered_sources

        # an explicit source object: a bare path is ambiguous to MLflow's source registry (it warns)
        local = next(s for s in get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource")
        src = local(str(Path(source).resolve()))
        dataset = mlflow.data.from_pandas(df, source=src, name=name)
        self._mlflow.log_input(dataset, context=context)


def git_commit() -> str:
    """HEAD of the checkout we run from, with `-dirty` when tracked files changed (the run is then not
    reproducible from the commit alone, and the tag says so)."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# Tags every stage run opened in this context gets (a tuning study tags each trial's finetune run with its
# study and trial number, so a run left by a killed worker can be found and closed).
_EXTRA_TAGS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("albert_exp_tags", default=None)


@contextlib.contextmanager
def run_tags(tags: dict[str, Any]) -> Iterator[None]:
    token = _EXTRA_TAGS.set({**(_EXTRA_TAGS.get() or {}), **tags})
    try:
        yield
    finally:
        _EXTRA_TAGS.reset(token)


def _sigterm_to_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def stage_run(
    cfg: ExperimentConfig,
    stage: str,
    description: str = "",
    *,
    section: str | None = None,
    extra_params: dict[str, Any] | None = None,
    enabled: bool = True,
) -> Iterator[NoopTracker]:
    """Open the MLflow run of one stage and log its resolved config. Yields a tracker."""
    if not enabled:
        yield NoopTracker()
        return
    import mlflow

    parent = mlflow.active_run()
    if parent is None and not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(cfg.name)
    run_name = f"{stage} {description}".strip()
    run = mlflow.start_run(run_name=run_name, nested=parent is not None)
    tracker = MlflowTracker(run)
    previous = signal.getsignal(signal.SIGTERM)
    with contextlib.suppress(ValueError):  # not in the main thread: leave signals alone
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    status = "FINISHED"
    try:
        resolved = to_dict(cfg)
        params = {"name": cfg.name, "seed": cfg.seed}
        sections = [section or stage.replace("-", "_")]
        for s in sections:
            if s in resolved:
                params.update(flatten(resolved[s], f"{s}."))
        params.update(extra_params or {})
        tracker.log_params(params)
        tracker.set_tags(
            {"stage": stage, "experiment_config": cfg.source, "git_commit": git_commit(), **(_EXTRA_TAGS.get() or {})}
        )
        tracker.log_text(to_yaml(cfg), "config/resolved.yaml")
        yield tracker
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except Exception as exc:
        status = "FAILED"
        if type(exc).__name__ == "TrialPruned":  # optuna stopped it early: not a failure, but not finished
            status = "KILLED"
            mlflow.set_tag("pruned", "true")
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, previous)
        mlflow.end_run(status=status)


def write_results(out_dir: str | Path, results: dict[str, Any], tracker: NoopTracker | None = None) -> Path:
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
