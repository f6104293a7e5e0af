"""The CRF baseline as an MLflow "model from code" (see pyfunc_model.py): loading it never unpickles anything."""

import mlflow

from albert_exp.crf import CRFExtractor

mlflow.models.set_model(CRFExtractor())
