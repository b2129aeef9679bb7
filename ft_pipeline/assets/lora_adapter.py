"""lora_adapter: a LoRA adapter per task trained on its dataset, logged to MLflow and registered as a model version."""

from dagster import AssetDep, AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from ft_pipeline.core.lineage import dataset_dir
from ft_pipeline.partitions import task_partitions
from ft_pipeline.resources import PipelineResource, stage_config

TrainingConfig = stage_config("training", "TrainingConfig")


def _float(value: float | None) -> MetadataValue:
    """A numeric metadata value, or null when there is none (no dev split, or no training this run)."""
    return MetadataValue.null() if value is None else MetadataValue.float(value)


@asset(
    partitions_def=task_partitions,
    deps=[AssetDep("task_dataset"), AssetDep("base_model")],
    group_name="training",
    pool="gpu",
    kinds={"pytorch", "mlflow"},
    description="peft LoRA adapter of one task on the base model: loss on assistant tokens, example weights, "
    "early stopping on the dev split's loss, resumable checkpoints; an MLflow run and a registered model version.",
)
def lora_adapter(context: AssetExecutionContext, config: TrainingConfig, pipeline: PipelineResource) -> MaterializeResult:
    """Train the partition's task and store the adapter under adapters/<task>/<version>/."""
    from ft_pipeline.training.lora import train_task, validation_ok

    settings = pipeline.settings(config)
    task = context.partition_key
    ok, reason = validation_ok(dataset_dir(settings.datasets_dir, task) / "validation.json")
    if not ok:
        # The blocking dataset check normally stops the run first; this guards runs that skip checks.
        raise Failure(description=f"not training {task}: {reason}")
    result = train_task(settings, task, log=context.log.info, tags={"dagster_run_id": context.run_id, "dagster_partition": task})
    metrics = result.metrics
    return MaterializeResult(
        metadata={
            "version": result.version,
            "train_loss": _float(metrics["train_loss"]),
            "dev_loss": _float(metrics["best_dev_loss"]),
            "initial_dev_loss": _float(metrics["initial_dev_loss"]),
            "best_step": metrics["best_step"],
            "steps": metrics["steps"],
            "retrained": metrics["retrained"],
            "stopped_early": bool(metrics["stopped_early"]),
            "tokens_per_s": _float(metrics["tokens_per_s"]),
            "trainable_params": metrics["trainable_params"],
            "n_train": metrics["n_train"],
            "n_dev": metrics["n_dev"],
            "mlflow_run_id": result.run_id,
            "mlflow_run": MetadataValue.text(result.run_path),
            "path": MetadataValue.path(str(result.adapter_dir)),
        }
    )
