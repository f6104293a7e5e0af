"""The model registry calls `promote` and `lineage` make (`Registry`), and reading models and artifacts by URI."""

from __future__ import annotations

from typing import Any

from albert_exp.tracking.store import store_client


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


def logged_model_uri(model_uri: str) -> tuple[str | None, str]:
    """(run id, `models:/<model id>`) of the model a run logged under `runs:/<run>/<name>` (the latest, if it
    logged several of that name); any other URI as it is, with no run."""
    if not model_uri.startswith("runs:/"):
        return None, model_uri
    run_id, _, name = model_uri.removeprefix("runs:/").partition("/")
    client = store_client()
    experiment = client.get_run(run_id).info.experiment_id
    models = client.search_logged_models(
        experiment_ids=[experiment], filter_string=f"name = '{name}' and source_run_id = '{run_id}'"
    )
    if not models:
        return run_id, model_uri  # a model from before MLflow 3, in the run's own artifacts
    return run_id, f"models:/{max(models, key=lambda m: m.creation_timestamp).model_id}"


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
        """A new version of `name` from `model_uri`; a run's model (`runs:/<run>/<name>`) is registered by its
        logged model's own URI (`models:/m-...`, where MLflow 3 keeps its files: the runs:/ URI makes MLflow warn
        that the run has no artifacts at that path), with the run as the version's run."""
        import mlflow

        run_id, uri = logged_model_uri(model_uri)
        version = mlflow.register_model(uri, name, tags=tags)
        if run_id and version.run_id != run_id:
            raise RuntimeError(f"version {version.version} of {name} lost its run {run_id}")
        return version

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
