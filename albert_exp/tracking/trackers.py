"""Trackers: what a stage logs through, bound to one run id (nothing depends on MLflow's "active run").

`Tracker` is the interface stages see; `MlflowTracker` writes into an MLflow run, `FakeTracker` records in
memory (unit tests, non-zero ranks, `runs.offline()`); neither derives from the other. `SkipLogged` wraps one
for a loop resumed from a checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from albert_exp.tracking.store import store_client

PARAM_CHARS = 6000  # MLflow caps a param value at 6000 characters; the full config is also logged as YAML


def param_values(params: dict[str, Any]) -> dict[str, str]:
    """Params as MLflow stores them: strings (None: empty), cut at PARAM_CHARS."""
    return {k: ("" if v is None else str(v))[:PARAM_CHARS] for k, v in params.items()}


@runtime_checkable
class Tracker(Protocol):
    """The calls a stage makes on its run. Every metric carries an explicit step."""

    run_id: str | None
    experiment_id: str | None

    def log_params(self, params: dict[str, Any]) -> Any: ...

    def set_tags(self, tags: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_history(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        """Several steps at once (one batched write to the store)."""

    def logged_steps(self, keys: set[str]) -> set[tuple[str, int]]:
        """(metric, step) pairs of `keys` already in this run (a resumed run skips them)."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_dict(self, data: dict, artifact_file: str) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_figure(self, figure: Any, artifact_file: str) -> None: ...

    def log_input(
        self, df: Any, name: str, source: str, context: str, digest: str | None = None, targets: str | None = None
    ) -> None: ...

    def log_input_digest(self, name: str, source: str, digest: str, context: str = "input") -> None:
        """An input known by its content digest (a manifest, a model or tokenizer directory)."""

    def link_model_metrics(self, model_id: str, *steps: int) -> None:
        """The run's metrics at these steps become the logged model's (shown on its page in the UI)."""


class FakeTracker:
    """A Tracker that records in memory (unit tests, non-zero ranks, offline stage runs)."""

    run_id: str | None = None
    experiment_id: str | None = None

    def __init__(self) -> None:
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.artifacts: list[str] = []
        self.inputs: list[dict[str, str]] = []

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update(param_values(params))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.tags.update({k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.log_history([(step, metrics)])

    def log_history(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        for step, metrics in rows:
            for k, v in metrics.items():
                self.metrics.setdefault(k, []).append((int(step), float(v)))

    def logged_steps(self, keys: set[str]) -> set[tuple[str, int]]:
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

    def link_model_metrics(self, model_id: str, *steps: int) -> None:
        pass

    def log_input_digest(self, name: str, source: str, digest: str, context: str = "input") -> None:
        self.inputs.append({"name": name, "source": str(source), "context": context, "digest": digest})


def _local_source(source: str) -> Any:
    """An explicit dataset source: a bare path is ambiguous to MLflow's source registry (it warns)."""
    from mlflow.data.dataset_source_registry import get_registered_sources

    local = next(s for s in get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource")
    return local(str(Path(source).resolve()))


class MlflowTracker:
    """A Tracker that logs into one MLflow run, named by its id in every call."""

    def __init__(self, run_id: str, experiment_id: str | None = None) -> None:
        self._client = store_client()
        self.run_id = run_id
        self.experiment_id = experiment_id or self._client.get_run(run_id).info.experiment_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self._client.log_batch(self.run_id, params=[Param(k, v) for k, v in param_values(params).items()])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.log_history([(step, metrics)])

    def log_history(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        import time

        from mlflow.entities import Metric

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

    def link_model_metrics(self, model_id: str, *steps: int) -> None:
        from mlflow.entities import Metric

        metrics = []
        for key in self._client.get_run(self.run_id).data.metrics:
            for m in self._client.get_metric_history(self.run_id, key):
                if m.step in steps and m.model_id is None:
                    metrics.append(Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id, run_id=self.run_id))
        if metrics:
            self._client.log_batch(self.run_id, metrics=metrics)

    def log_input(
        self, df: Any, name: str, source: str, context: str, digest: str | None = None, targets: str | None = None
    ) -> None:
        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag

        dataset = mlflow.data.from_pandas(df, source=_local_source(source), name=name, digest=digest, targets=targets)
        entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
        self._client.log_inputs(self.run_id, datasets=[entity])

    def log_input_digest(self, name: str, source: str, digest: str, context: str = "input") -> None:
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        dataset = MetaDataset(_local_source(source), name=name, digest=digest[:36])
        entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
        self._client.log_inputs(self.run_id, datasets=[entity])


class SkipLogged:
    """A tracker for a resumed loop: drops the (metric, step) pairs its run already has (a loop resumed from a
    checkpoint recomputes the steps after it, which a killed run may have logged), so every step is in the
    history once."""

    def __init__(self, inner: Tracker) -> None:
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
