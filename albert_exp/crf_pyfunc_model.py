"""The CRF baseline as an MLflow "model from code" (see pyfunc_model.py): loading it never unpickles anything."""

import warnings

import mlflow

with warnings.catch_warnings():  # CRFExtractor.predict has no type hints yet: MLflow's warning is not the user's
    warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method", category=UserWarning)
    from albert_exp.crf import CRFExtractor

mlflow.models.set_model(CRFExtractor())
