"""The models-from-code file of a registered adapter version: MLflow runs it to get the model object."""

import mlflow

from ft_pipeline.training.pyfunc import AdapterModel

mlflow.models.set_model(AdapterModel())
