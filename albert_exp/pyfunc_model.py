"""The phrase extractor as an MLflow "model from code": logging this file instead of a pickled object means
loading the model executes our code, never unpickles data (safe by default)."""

import mlflow

from albert_exp.serving import PhraseExtractor

mlflow.models.set_model(PhraseExtractor())
