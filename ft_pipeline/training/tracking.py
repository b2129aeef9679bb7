"""MLflow helpers: one experiment per task (its artifacts under the data dir, or on the tracking server), one run per
training, one registered version per adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ft_pipeline.core.locks import hold
from ft_pipeline.core.segments import checked_model_key
from ft_pipeline.settings import Settings

# A dataset's files as logged with each training run under `dataset/`: what lineage replays.
DATASET_ARTIFACTS = ("train.jsonl", "dev.jsonl", "test.jsonl", "preferences.jsonl", "manifest.json", "validation.json")


def experiment_name(task: str) -> str:
    """Name of a task's MLflow experiment."""
    return f"ft_pipeline/{checked_model_key(task)}"


def registered_model_name(task: str) -> str:
    """Name of a task's registered model."""
    return f"ft_pipeline.{checked_model_key(task)}"


def client(settings: Settings) -> Any:
    """An MlflowClient on the pipeline's tracking store, without touching MLflow's global state."""
    from mlflow.tracking import MlflowClient

    uri = settings.tracking_uri
    if not uri.startswith("sqlite:///") or uri in _ready:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    # the first use creates and migrates the database; processes doing it at once fail on each other's tables
    with hold(settings.root, "mlflow-store"):
        mlflow_client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        mlflow_client.search_experiments(max_results=1)
        mlflow_client.search_registered_models(max_results=1)
    _ready.add(uri)
    return mlflow_client


_ready: set[str] = set()  # sqlite stores this process has seen set up


def is_server(tracking_uri: str) -> bool:
    """Whether the tracking URI names an MLflow tracking server rather than a store on this machine."""
    return tracking_uri.split(":", 1)[0] in ("http", "https", "databricks")


def ensure_experiment(settings: Settings, task: str) -> str:
    """Id of the task's experiment: with a local store, created with an artifact location under
    settings.artifact_root; with a tracking server, with the server's own artifact root."""
    mlflow_client = client(settings)
    with hold(settings.root, "mlflow-store"):  # two first trainings of a task would both create its experiment
        existing = mlflow_client.get_experiment_by_name(experiment_name(task))
        if existing is not None:
            return existing.experiment_id
        if is_server(settings.tracking_uri):
            # the server's root (proxied `mlflow-artifacts:` with --serve-artifacts): a file:// location would keep
            # the artifacts on whichever machine trained, out of reach of every other
            return mlflow_client.create_experiment(experiment_name(task))
        # Explicit, or artifacts would land in ./mlruns of whatever the current directory is.
        location = (settings.artifact_root / checked_model_key(task)).as_uri()
        return mlflow_client.create_experiment(experiment_name(task), artifact_location=location)


def run_path(settings: Settings, run_id: str) -> str:
    """Where a run is found: the tracking URI and the run's page path in the MLflow UI."""
    run = client(settings).get_run(run_id)
    return f"{settings.tracking_uri} #/experiments/{run.info.experiment_id}/runs/{run_id}"


class Tracker:
    """One MLflow run of a training: params, buffered metrics, artifacts and its final status."""

    def __init__(self, settings: Settings, run_id: str):
        self.settings = settings
        self.run_id = run_id
        self.client = client(settings)
        self._pending: list[Any] = []

    @classmethod
    def start(
        cls,
        settings: Settings,
        task: str,
        params: dict[str, Any],
        tags: dict[str, str] | None = None,
        run_name: str | None = None,
    ) -> Tracker:
        """A new run in the task's experiment with its params and tags."""
        from mlflow.entities import Param

        mlflow_client = client(settings)
        run = mlflow_client.create_run(ensure_experiment(settings, task), run_name=run_name, tags={"task": task, **(tags or {})})
        tracker = cls(settings, run.info.run_id)
        mlflow_client.log_batch(tracker.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return tracker

    @classmethod
    def resume(cls, settings: Settings, run_id: str, tags: dict[str, str] | None = None) -> Tracker:
        """An interrupted run reopened, so a resumed training keeps one run."""
        tracker = cls(settings, run_id)
        tracker.client.update_run(run_id, status="RUNNING")
        for key, value in (tags or {}).items():
            tracker.client.set_tag(run_id, key, str(value))
        return tracker

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue metrics of one step; they reach the store on flush."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]

    def flush(self) -> None:
        """Write the queued metrics in batches (MLflow takes at most 1000 per call)."""
        while self._pending:
            batch, self._pending = self._pending[:1000], self._pending[1000:]
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        """Copy a folder into the run's artifacts."""
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_artifact(self, local_file: Path, artifact_path: str | None = None) -> None:
        """Copy one file into the run's artifacts."""
        self.client.log_artifact(self.run_id, str(local_file), artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Set tags on the run."""
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_model(self, task: str, save: Any) -> str:
        """An MLflow logged model of this run whose files `save(folder, mlflow_model)` writes; returns its model id.

        The client's logged-model calls do what `mlflow.pyfunc.log_model` does, without its global tracking state.
        """
        import tempfile

        from mlflow.entities import LoggedModelOutput
        from mlflow.models import Model

        model = self.client.create_logged_model(ensure_experiment(self.settings, task), name="model", source_run_id=self.run_id)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp) / "model"
                save(folder, Model(run_id=self.run_id, model_id=model.model_id, artifact_path=model.artifact_location))
                self.client.log_model_artifacts(model.model_id, str(folder))
        except BaseException:
            self.client.finalize_logged_model(model.model_id, "FAILED")
            raise
        self.client.finalize_logged_model(model.model_id, "READY")
        self.client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step=0)])
        return str(model.model_id)

    def register(self, task: str, artifact_path: str, tags: dict[str, Any], model_id: str | None = None) -> int:
        """A new version of the task's registered model: the logged model `model_id`, else a folder of this run's artifacts."""
        from mlflow.exceptions import MlflowException

        name = registered_model_name(task)
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name, description=f"LoRA adapters of task {task}.")
        # register_model("runs:/...") fails on a plain artifact folder in MLflow 3; a version with an explicit source works.
        # A logged model's source is its folder: a `models:/<id>` source is resolved on MLflow's global tracking store.
        if model_id:
            source = self.client.get_logged_model(model_id).artifact_location
        else:
            source = f"{self.client.get_run(self.run_id).info.artifact_uri}/{artifact_path}"
        version = self.client.create_model_version(
            name, source=source, run_id=self.run_id, tags={k: str(v) for k, v in tags.items()}, model_id=model_id
        )
        return int(version.version)

    def finish(self, status: str = "FINISHED") -> None:
        """Close the run with a terminal status (FINISHED, FAILED, KILLED)."""
        if status == "FINISHED":
            self.flush()
        # Otherwise the queued metrics are of steps after the last checkpoint, which a resumed run repeats.
        self._pending = []
        self.client.set_terminated(self.run_id, status=status)


def dataset_artifact(settings: Settings, run_id: str, name: str, dst: Path) -> Path | None:
    """One dataset file logged with a training run, downloaded into `dst`; None when the run has no such artifact."""
    if name not in DATASET_ARTIFACTS:
        raise ValueError(f"{name!r} is not a dataset file; one of {', '.join(DATASET_ARTIFACTS)}")
    mlflow_client = client(settings)
    if not any(a.path == f"dataset/{name}" for a in mlflow_client.list_artifacts(run_id, "dataset")):
        return None
    return Path(mlflow_client.download_artifacts(run_id, f"dataset/{name}", str(dst)))


def dataset_manifest(settings: Settings, run_id: str) -> dict[str, Any] | None:
    """The dataset manifest logged with a training run, or None when it logged none."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = dataset_artifact(settings, run_id, "manifest.json", Path(tmp))
        return json.loads(path.read_text(encoding="utf-8")) if path else None


def trained_log_ids(settings: Settings, run_id: str, split: str = "train") -> list[str]:
    """The log ids of one split of the dataset a training run used, in file order, from the files logged with the run."""
    import tempfile

    from ft_pipeline.core.io import read_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        path = dataset_artifact(settings, run_id, f"{split}.jsonl", Path(tmp))
        if path is None:
            raise LookupError(f"MLflow run {run_id} logged no dataset/{split}.jsonl")
        return [str(row["id"]) for row in read_jsonl(path)]
