"""Phrase extraction from a fine-tuned tagger, as a plain function and as an MLflow pyfunc model.

    import mlflow
    model = mlflow.pyfunc.load_model("models:/dish-tagger@champion")
    model.predict(pd.DataFrame({"text": ["The spicy lamb dumplings were great."]}))
    # -> DataFrame with columns phrases (list of str), spans ([{start, end, text}]), tokens ([{token, start, end,
    #    tag, score}])

`mlflow.transformers`' own pyfunc for token classification returns labels without spans, so we serve our own.
The pyfunc carries the HF model directory as an artifact and this package as code, and loads weights from
safetensors only. It runs on the serving host's GPU when it has one (bf16 where the card has it), else on
the CPU; `model_config={"device": "cpu"}` at load time (`albert-exp predict --device cpu`) keeps it there.

Served (`mlflow models serve`), one request holds at most 1,000 rows (ALBERT_EXP_SERVE_MAX_ROWS) and 100,000
characters of text in all (ALBERT_EXP_SERVE_MAX_CHARS), both read from the server's environment; a larger
request is answered 400 with the limit and the variable that raises it. Texts are scored in chunks of at most
CHUNK_CHARS characters, and scoring stops at the server's own request timeout
(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT, 60 s), when the client has had its 504: the work ends with the request
instead of running on for minutes. Batch use (`albert-exp predict`, `promote`, in-process `load_model`) has no
limit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

MAX_ROWS_ENV, DEFAULT_MAX_ROWS = "ALBERT_EXP_SERVE_MAX_ROWS", 1_000
MAX_CHARS_ENV, DEFAULT_MAX_CHARS = "ALBERT_EXP_SERVE_MAX_CHARS", 100_000  # 100x a typical review
CHUNK_CHARS = 20_000  # texts per model call at most (a longer text alone): the time between two deadline checks


def extract(
    texts: list[str],
    model: Any,
    tokenizer: Any,
    *,
    max_seq_length: int,
    batch_size: int = 64,
    threshold: float = 0.5,
    stride: int | None = None,
    aggregation: str = "average",
    deadline: float | None = None,
) -> list[dict[str, Any]]:
    """Tag whole texts (overlapping windows, albert_exp.windows) and return per text its phrases (runs of
    whole words, albert_exp.words), their character spans, and the tokens with tag and score. `deadline`
    (time.monotonic()): TimeoutError before any chunk that would start after it."""
    from albert_exp.windows import tag_texts
    from albert_exp.words import extract_spans

    stride = (max_seq_length - 2) // 4 if stride is None else stride
    out: list[dict[str, Any]] = []
    for chunk in chunks(texts, batch_size, CHUNK_CHARS):
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"stopped after {len(out)} of {len(texts)} texts: past the request's deadline")
        tagged = tag_texts(chunk, model, tokenizer, max_seq_length=max_seq_length, stride=stride, batch_size=batch_size)
        for text, t in zip(chunk, tagged, strict=True):
            words, probs, spans = extract_spans(
                text, t["offsets"], t["scores"], strategy=aggregation, threshold=threshold
            )
            tagged_words = [w for w, p in zip(words, probs, strict=True) if p >= threshold]
            tokens = [
                {
                    "token": tokenizer.convert_ids_to_tokens(int(tid)),
                    "start": s,
                    "end": e,
                    # the word view decides: a token is tagged when a word it overlaps is tagged
                    "tag": int(any(s < we and e > ws for ws, we in tagged_words)),
                    "score": round(float(p), 4),
                }
                for tid, (s, e), p in zip(t["ids"], t["offsets"], t["scores"], strict=True)
            ]
            out.append(
                {
                    "phrases": [text[s:e] for s, e in spans],
                    "spans": [{"start": s, "end": e, "text": text[s:e]} for s, e in spans],
                    "tokens": tokens,
                }
            )
    return out


def chunks(texts: list[str], max_texts: int, max_chars: int) -> list[list[str]]:
    """Consecutive runs of at most max_texts texts and max_chars characters (a longer text is a run alone)."""
    out: list[list[str]] = []
    size = 0
    for text in texts:
        if not out or len(out[-1]) >= max_texts or size + len(text) > max_chars:
            out.append([])
            size = 0
        out[-1].append(text)
        size += len(text)
    return out


def serving_limits() -> tuple[int, int, int] | None:
    """(max rows, max characters, request timeout in s) inside MLflow's scoring server, else None (batch use).
    The server marks its process with _MLFLOW_IS_IN_SERVING_ENVIRONMENT (mlflow.pyfunc.scoring_server.init)."""
    if os.environ.get("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "").lower() != "true":
        return None
    limits = []
    for name, default in (
        (MAX_ROWS_ENV, DEFAULT_MAX_ROWS),
        (MAX_CHARS_ENV, DEFAULT_MAX_CHARS),
        ("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", 60),
    ):
        value = os.environ.get(name, "").strip() or str(default)
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{name}={value!r}: give a whole number >= 1 (default {default})")
        limits.append(int(value))
    return limits[0], limits[1], limits[2]


def check_request(texts: list[str], max_rows: int, max_chars: int) -> None:
    """A request over the limits is the client's error (HTTP 400), saying the limit and how to raise it."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    chars = sum(map(len, texts))
    for what, n, limit, env in (
        ("rows", len(texts), max_rows, MAX_ROWS_ENV),
        ("characters", chars, max_chars, MAX_CHARS_ENV),
    ):
        if n > limit:
            raise MlflowException(
                f"request too large: {n:,} {what}, at most {limit:,} per request (send smaller batches, or start "
                f"the server with {env} raised)",
                error_code=INVALID_PARAMETER_VALUE,
            )


def input_texts(model_input: Any) -> list[str]:
    """The `text` values of a pyfunc input (a DataFrame with a `text` column, a list, or one value), all
    strings; anything else is the caller's error, which the scoring server answers with HTTP 400."""
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    if isinstance(model_input, pd.DataFrame):
        if "text" not in model_input.columns:
            raise MlflowException(
                f"input needs a 'text' column; got {list(model_input.columns)}", error_code=INVALID_PARAMETER_VALUE
            )
        texts = model_input["text"].tolist()
    elif isinstance(model_input, (list, tuple)):
        texts = list(model_input)
    else:
        texts = [model_input]
    bad = [(i, t) for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        i, t = bad[0]
        raise MlflowException(
            f"'text' must be a string in every row; row {i} is {type(t).__name__} {t!r:.40} ({len(bad)} such row(s))",
            error_code=INVALID_PARAMETER_VALUE,
        )
    return texts


class PhraseExtractor(mlflow.pyfunc.PythonModel):
    """pyfunc: DataFrame with a `text` column -> DataFrame with phrases, spans and tokens per row."""

    def load_context(self, context: Any) -> None:
        import torch
        from transformers import AlbertForTokenClassification

        from albert_exp.devices import on_device
        from albert_exp.hf_local import load_model, load_tokenizer

        model_dir = context.artifacts["hf_model"]
        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
        self.tokenizer = load_tokenizer(model_dir)
        config = context.model_config or {}
        model = load_model(AlbertForTokenClassification, model_dir, use_safetensors=True)
        # the host's GPU when it has one (models logged before this setting existed: auto too)
        self.model = on_device(model, str(config.get("device") or "auto"), "the model's device")
        self.max_seq_length = int(config.get("max_seq_length", 64))
        self.stride = config.get("window_stride")
        self.aggregation = str(config.get("aggregation", "average"))

    # A DataFrame hint: MLflow infers no schema from it (the logged signature validates the input, and a list
    # of texts is still accepted), and does not warn on every load that the method has no type hints.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException

        threshold = float((params or {}).get("threshold", 0.5))
        texts = input_texts(model_input)
        deadline = None
        limits = serving_limits()  # per call: the server marks its process only after loading the model
        if limits is not None:
            max_rows, max_chars, timeout_s = limits
            check_request(texts, max_rows, max_chars)
            deadline = time.monotonic() + timeout_s
        try:
            rows = extract(
                texts,
                self.model,
                self.tokenizer,
                max_seq_length=self.max_seq_length,
                threshold=threshold,
                stride=None if self.stride is None else int(self.stride),
                aggregation=self.aggregation,
                deadline=deadline,
            )
        except TimeoutError as exc:  # the client has had the server's 504 already; this frees the worker
            raise MlflowException(f"{exc} (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT)") from None
        return pd.DataFrame(rows, columns=["phrases", "spans", "tokens"])


def score_pyfunc(model_uri: str, eval_csv: Any, f: Any) -> dict[str, float]:
    """Span metrics of any phrase-extractor pyfunc (the CRF's, or an ALBERT's) on a labelled CSV: what `promote`
    uses for a candidate that has no HF model. Token accuracy needs a tokenizer; this reports word accuracy."""
    import mlflow
    import pandas as pd

    from albert_exp.data import labelled_spans
    from albert_exp.metrics import span_metrics

    kept, _, _ = labelled_spans(
        eval_csv,
        text_column=f.text_column,
        phrase_column=f.phrase_column,
        separator=f.phrase_separator,
        case_insensitive=f.case_insensitive,
    )
    texts = [t for _, t, _, _ in kept]
    out = mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"text": texts}))
    pred = [[(s["start"], s["end"]) for s in spans] for spans in out["spans"]]
    return span_metrics(texts, [s for _, _, s, _ in kept], pred)


def log_phrase_extractor(
    model_dir: str | Path,
    example_texts: list[str],
    max_seq_length: int,
    name: str = "phrase_extractor",
    window_stride: int | None = None,
    aggregation: str = "average",
) -> Any:
    """Log the pyfunc with a signature and an input example into the active run; returns the ModelInfo."""
    import pandas as pd
    import torch

    example = pd.DataFrame({"text": example_texts})
    holder = PhraseExtractor()
    config = {
        "max_seq_length": max_seq_length,
        "window_stride": window_stride,
        "aggregation": aggregation,
        "device": "auto",  # where it serves: CUDA when the host has it; load_model(..., model_config=) overrides it
    }

    class _Ctx:  # infer the output schema from a real prediction of this model
        artifacts = {"hf_model": str(model_dir)}
        model_config = config

    threads = torch.get_num_threads()  # load_context caps threads for serving; not for the training process
    try:
        holder.load_context(_Ctx)
        output = holder.predict(None, example)
    finally:
        torch.set_num_threads(threads)
    return log_from_code("pyfunc_model.py", {"hf_model": str(model_dir)}, config, example, output, name)


# What a logged pyfunc ships of this package (as the package `albert_exp`, so the model serves on its own).
MODULES = (
    "__init__.py",
    "errors.py",
    "devices.py",
    "hf_local.py",
    "labels.py",
    "data.py",
    "words.py",
    "windows.py",
    "serving.py",
    "crf.py",
)


def log_from_code(
    model_file: str,
    artifacts: dict[str, str],
    model_config: dict[str, Any],
    example: Any,
    output: Any,
    name: str,
    extra_requirements: tuple[str, ...] = (),
) -> Any:
    """Log a "model from code" pyfunc (`model_file`, a module of this package that calls set_model) into the
    active run, with a signature inferred from a real prediction and an input example."""
    from mlflow.models import infer_signature

    signature = infer_signature(example, output, params={"threshold": 0.5})
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "albert_exp"
        package.mkdir()
        here = Path(__file__).resolve().parent
        for module in (*MODULES, model_file):
            shutil.copy(here / module, package / module)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(package / model_file),
            artifacts=artifacts,
            code_paths=[str(package)],
            signature=signature,
            input_example=example,
            model_config=model_config,
            pip_requirements=_requirements(extra_requirements),
        )


def _requirements(extra: tuple[str, ...] = ()) -> list[str]:
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
        keep = ("torch", "transformers", "tokenizers", "mlflow", "pandas", "numpy", "sentencepiece", "safetensors")
        return [d for d in deps if d.split("==")[0] in (*keep, *extra)]
    return ["torch", "transformers", "mlflow", "pandas"]
