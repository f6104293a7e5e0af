"""Phrase extraction from a fine-tuned tagger, as a plain function and as an MLflow pyfunc model.

    import mlflow
    model = mlflow.pyfunc.load_model("models:/dish-tagger@champion")
    model.predict(pd.DataFrame({"text": ["The spicy lamb dumplings were great."]}))
    # -> DataFrame with columns phrases (list of str), spans ([{start, end, text}]), tokens ([{token, start, end,
    #    tag, score}])

`mlflow.transformers`' own pyfunc for token classification returns labels without spans, so we serve our own.
The pyfunc carries the HF model directory as an artifact and this package as code, and loads weights from
safetensors only.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from albert_exp.labels import tags_to_spans


def extract(
    texts: list[str], model: Any, tokenizer: Any, *, max_seq_length: int, batch_size: int = 64, threshold: float = 0.5
) -> list[dict[str, Any]]:
    """Tag each text and return its phrases, character spans and per-token tags with scores."""
    import torch

    out: list[dict[str, Any]] = []
    model.eval()
    for i in range(0, len(texts), batch_size):
        chunk = [t if isinstance(t, str) else "" for t in texts[i : i + batch_size]]
        enc = tokenizer(
            chunk,
            truncation=True,
            max_length=max_seq_length,
            padding=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        probs = torch.softmax(logits, dim=-1)[..., 1]
        for j, text in enumerate(chunk):
            offsets = [tuple(map(int, o)) for o in enc["offset_mapping"][j]]
            special = enc["special_tokens_mask"][j].tolist()
            real = enc["attention_mask"][j].tolist()
            scores = probs[j].tolist()
            tags = [int(p >= threshold) if r and not s else 0 for p, r, s in zip(scores, real, special, strict=True)]
            spans = tags_to_spans(offsets, tags)
            tokens = [
                {
                    "token": tokenizer.convert_ids_to_tokens(int(tid)),
                    "start": s,
                    "end": e,
                    "tag": t,
                    "score": round(float(p), 4),
                }
                for tid, (s, e), t, p, r, sp in zip(
                    enc["input_ids"][j].tolist(), offsets, tags, probs[j].tolist(), real, special, strict=True
                )
                if r and not sp
            ]
            out.append(
                {
                    "phrases": [text[s:e] for s, e in spans],
                    "spans": [{"start": s, "end": e, "text": text[s:e]} for s, e in spans],
                    "tokens": tokens,
                }
            )
    return out


class PhraseExtractor(mlflow.pyfunc.PythonModel):
    """pyfunc: DataFrame with a `text` column -> DataFrame with phrases, spans and tokens per row."""

    def load_context(self, context: Any) -> None:
        import torch
        from transformers import AlbertForTokenClassification

        from albert_exp.hf_local import load_model, load_tokenizer

        model_dir = context.artifacts["hf_model"]
        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
        self.tokenizer = load_tokenizer(model_dir)
        self.model = load_model(AlbertForTokenClassification, model_dir, use_safetensors=True)
        self.max_seq_length = int((context.model_config or {}).get("max_seq_length", 64))

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as a schema
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            if "text" not in model_input.columns:
                raise ValueError(f"input needs a 'text' column; got {list(model_input.columns)}")
            texts = model_input["text"].tolist()
        elif isinstance(model_input, (list, tuple)):
            texts = list(model_input)
        else:
            texts = [str(model_input)]
        threshold = float((params or {}).get("threshold", 0.5))
        rows = extract(texts, self.model, self.tokenizer, max_seq_length=self.max_seq_length, threshold=threshold)
        return pd.DataFrame(rows, columns=["phrases", "spans", "tokens"])


def log_phrase_extractor(
    model_dir: str | Path, example_texts: list[str], max_seq_length: int, name: str = "phrase_extractor"
) -> Any:
    """Log the pyfunc with a signature and an input example into the active run; returns the ModelInfo."""
    import pandas as pd
    from mlflow.models import infer_signature

    example = pd.DataFrame({"text": example_texts})
    holder = PhraseExtractor()

    class _Ctx:  # infer the output schema from a real prediction of this model
        artifacts = {"hf_model": str(model_dir)}
        model_config = {"max_seq_length": max_seq_length}

    holder.load_context(_Ctx)
    signature = infer_signature(example, holder.predict(None, example), params={"threshold": 0.5})
    with tempfile.TemporaryDirectory() as tmp:
        # ship only the modules the model needs, as the package `albert_exp`, so the model serves on its own
        package = Path(tmp) / "albert_exp"
        package.mkdir()
        here = Path(__file__).resolve().parent
        for module in ("__init__.py", "serving.py", "labels.py", "pyfunc_model.py", "hf_local.py", "errors.py"):
            shutil.copy(here / module, package / module)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(package / "pyfunc_model.py"),
            artifacts={"hf_model": str(model_dir)},
            code_paths=[str(package)],
            signature=signature,
            input_example=example,
            model_config={"max_seq_length": max_seq_length},
            pip_requirements=_requirements(),
        )


def _requirements() -> list[str]:
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
        keep = ("torch", "transformers", "tokenizers", "mlflow", "pandas", "numpy", "sentencepiece", "safetensors")
        return [d for d in deps if d.split("==")[0] in keep]
    return ["torch", "transformers", "mlflow", "pandas"]
