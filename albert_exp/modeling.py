"""The one place that builds an ALBERT model: from the `model:` section (fresh) or from a saved directory.

    build("pretraining", model_dir="runs/toy/pretrain/best")                  # AlbertForPreTraining
    build("token_classification", arch=cfg.model, vocab_size=len(tokenizer))  # a fresh tagger

Weights load from safetensors only and never from the network (local_files_only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HEADS = {"pretraining": "AlbertForPreTraining", "token_classification": "AlbertForTokenClassification"}
# The tagger's two labels: outside / inside the wanted phrase.
TAG_LABELS = {"num_labels": 2, "id2label": {0: "O", 1: "PHRASE"}, "label2id": {"O": 0, "PHRASE": 1}}


def albert_config(arch: Any, vocab_size: int, **extra: Any) -> Any:
    """transformers' AlbertConfig of a `model:` section (albert_exp.config.ModelConfig); google's gelu is the tanh
    approximation ("gelu_new")."""
    from transformers import AlbertConfig

    from albert_exp.config import to_dict

    fields = {k: v for k, v in to_dict(arch).items() if k != "vocab_size"}
    return AlbertConfig(vocab_size=arch.vocab_size or vocab_size, hidden_act="gelu_new", **fields, **extra)


def build(
    head: str,
    *,
    model_dir: str | Path | None = None,
    arch: Any = None,
    vocab_size: int = 0,
    config: Any = None,
    **extra: Any,
) -> Any:
    """An ALBERT with `head` ("pretraining" or "token_classification"): the weights of `model_dir`, else a fresh
    model from `config` (an AlbertConfig) or `arch` (a ModelConfig) + `vocab_size`; `extra` goes into the config."""
    import transformers

    cls = getattr(transformers, HEADS[head])
    if model_dir:
        from albert_exp.hf_local import load_model

        return load_model(cls, model_dir, use_safetensors=True, **extra)  # local files only, one-line errors
    return cls(config if config is not None else albert_config(arch, vocab_size, **extra))
