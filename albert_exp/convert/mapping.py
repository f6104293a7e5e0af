"""Variable names of google-research/albert (TF1) <-> the Hugging Face `AlbertForPreTraining` state dict.

transformers 5 dropped `load_tf_weights_in_albert`, so the mapping lives here. TF dense kernels are stored
[in, out] and torch Linear weights [out, in]: kernels are transposed, everything else is copied as is.
`cls/seq_relationship/output_weights` is [2, hidden] in TF (used with transpose_b) and needs no transpose.

Pure numpy: works on {name: array} dicts, so it is testable without TensorFlow or a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from albert_exp.errors import UserError

SOP_VARIABLES = ("cls/seq_relationship/output_weights", "cls/seq_relationship/output_bias")
HUB_PREFIX = "module/"
OPTIMIZER_SUFFIXES = ("/adam_m", "/adam_v", "/lamb_m", "/lamb_v")
# google's ALBERT skips the embedding projection when embedding_size == hidden_size; HF always has one
# (set to the identity on import).
EMBEDDING_MAPPING = "bert/encoder/embedding_hidden_mapping_in"


@dataclass(frozen=True)
class Entry:
    tf: str
    hf: str
    transpose: bool = False


def _dense(tf: str, hf: str) -> list[Entry]:
    return [Entry(f"{tf}/kernel", f"{hf}.weight", True), Entry(f"{tf}/bias", f"{hf}.bias")]


def _norm(tf: str, hf: str) -> list[Entry]:
    return [Entry(f"{tf}/gamma", f"{hf}.weight"), Entry(f"{tf}/beta", f"{hf}.bias")]


def _layer(g: int, i: int) -> list[Entry]:
    tf = f"bert/encoder/transformer/group_{g}/inner_group_{i}"
    hf = f"albert.encoder.albert_layer_groups.{g}.albert_layers.{i}"
    return [
        *_dense(f"{tf}/attention_1/self/query", f"{hf}.attention.query"),
        *_dense(f"{tf}/attention_1/self/key", f"{hf}.attention.key"),
        *_dense(f"{tf}/attention_1/self/value", f"{hf}.attention.value"),
        *_dense(f"{tf}/attention_1/output/dense", f"{hf}.attention.dense"),
        *_norm(f"{tf}/LayerNorm", f"{hf}.attention.LayerNorm"),
        *_dense(f"{tf}/ffn_1/intermediate/dense", f"{hf}.ffn"),
        *_dense(f"{tf}/ffn_1/intermediate/output/dense", f"{hf}.ffn_output"),
        *_norm(f"{tf}/LayerNorm_1", f"{hf}.full_layer_layer_norm"),
    ]


def name_map(num_hidden_groups: int = 1, inner_group_num: int = 1) -> list[Entry]:
    """Every model variable of google's ALBERT pretraining graph with its HF name."""
    entries = [
        Entry("bert/embeddings/word_embeddings", "albert.embeddings.word_embeddings.weight"),
        Entry("bert/embeddings/token_type_embeddings", "albert.embeddings.token_type_embeddings.weight"),
        Entry("bert/embeddings/position_embeddings", "albert.embeddings.position_embeddings.weight"),
        *_norm("bert/embeddings/LayerNorm", "albert.embeddings.LayerNorm"),
        *_dense(EMBEDDING_MAPPING, "albert.encoder.embedding_hidden_mapping_in"),
    ]
    for g in range(num_hidden_groups):
        for i in range(inner_group_num):
            entries += _layer(g, i)
    entries += [
        *_dense("bert/pooler/dense", "albert.pooler"),
        *_dense("cls/predictions/transform/dense", "predictions.dense"),
        *_norm("cls/predictions/transform/LayerNorm", "predictions.LayerNorm"),
        Entry("cls/predictions/output_bias", "predictions.bias"),
        Entry(SOP_VARIABLES[0], "sop_classifier.classifier.weight"),
        Entry(SOP_VARIABLES[1], "sop_classifier.classifier.bias"),
    ]
    return entries


def model_variables(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop the TF-Hub `module/` prefix, optimizer slots and global_step: only the model's own weights."""
    out = {}
    for name, value in variables.items():
        name = name.removeprefix(HUB_PREFIX)
        if name == "global_step" or name.endswith(OPTIMIZER_SUFFIXES):
            continue
        out[name] = value
    return out


def count_groups(variables: dict[str, np.ndarray]) -> tuple[int, int]:
    """(num_hidden_groups, inner_group_num) as present in a TF checkpoint."""
    import re

    groups, inner = set(), set()
    for name in variables:
        m = re.match(r"bert/encoder/transformer/group_(\d+)/inner_group_(\d+)/", name)
        if m:
            groups.add(int(m.group(1)))
            inner.add(int(m.group(2)))
    if not groups:
        raise UserError(
            "no ALBERT transformer variables (bert/encoder/transformer/group_*) in the checkpoint",
            fix="give a google-research/albert checkpoint or a TF-Hub ALBERT module",
        )
    return max(groups) + 1, max(inner) + 1


def tf_to_hf_arrays(
    variables: dict[str, np.ndarray],
    num_hidden_groups: int,
    inner_group_num: int,
    hidden_size: int,
    where: str = "checkpoint",
) -> tuple[dict[str, np.ndarray], list[str]]:
    """TF variables -> HF state dict (numpy). Returns (state, names of TF variables that were absent).

    Only the SOP head may be absent (TF-Hub modules ship without it; the caller decides what to do); the
    embedding projection may be absent when embedding_size == hidden_size (then it is the identity).
    """
    variables = model_variables(variables)
    state: dict[str, np.ndarray] = {}
    absent = []
    for e in name_map(num_hidden_groups, inner_group_num):
        if e.tf not in variables:
            if e.tf.startswith(EMBEDDING_MAPPING):
                state[e.hf] = (
                    np.eye(hidden_size, dtype=np.float32) if e.transpose else np.zeros(hidden_size, dtype=np.float32)
                )
                continue
            absent.append(e.tf)
            continue
        value = np.asarray(variables[e.tf], dtype=np.float32)
        state[e.hf] = np.ascontiguousarray(value.T) if e.transpose else value
    missing = [a for a in absent if a not in SOP_VARIABLES]
    if missing:
        raise UserError(
            f"{len(missing)} ALBERT variables missing, e.g. {missing[0]}",
            where=where,
            fix="is this a google-research/albert checkpoint with the same num_hidden_groups?",
        )
    known = {e.tf for e in name_map(num_hidden_groups, inner_group_num)}
    unknown = sorted(set(variables) - known)
    if unknown:
        raise UserError(
            f"{len(unknown)} variables have no Hugging Face counterpart, e.g. {unknown[0]}",
            where=where,
            fix="only ALBERT pretraining checkpoints (bert/ and cls/) are supported",
        )
    return state, absent


def hf_to_tf_arrays(
    state: dict[str, np.ndarray],
    num_hidden_groups: int,
    inner_group_num: int,
) -> dict[str, np.ndarray]:
    """HF state dict (numpy) -> google's variable names and layouts."""
    out = {}
    for e in name_map(num_hidden_groups, inner_group_num):
        if e.hf not in state:
            raise UserError(
                f"the Hugging Face model has no '{e.hf}'",
                fix="give an AlbertForPreTraining directory (MLM and SOP heads)",
            )
        value = np.asarray(state[e.hf], dtype=np.float32)
        out[e.tf] = np.ascontiguousarray(value.T) if e.transpose else value
    return out


def with_optimizer_slots(variables: dict[str, np.ndarray], global_step: int = 0) -> dict[str, np.ndarray]:
    """What run_pretraining.py expects to restore: every trainable variable with zero `adam_m`/`adam_v`
    (google's LAMB/AdamW slot names) and an int64 `global_step`."""
    out = dict(variables)
    for name, value in variables.items():
        out[f"{name}/adam_m"] = np.zeros_like(value, dtype=np.float32)
        out[f"{name}/adam_v"] = np.zeros_like(value, dtype=np.float32)
    out["global_step"] = np.asarray(global_step, dtype=np.int64)
    return out


def add_missing_sop_head(variables: dict[str, np.ndarray]) -> list[str]:
    """TF-Hub modules ship without the SOP head: add it as zeros (in place). Returns the names added."""
    hidden = variables["bert/pooler/dense/kernel"].shape[1]
    shapes = {SOP_VARIABLES[0]: (2, hidden), SOP_VARIABLES[1]: (2,)}
    added = [n for n in SOP_VARIABLES if n not in variables]
    for n in added:
        variables[n] = np.zeros(shapes[n], dtype=np.float32)
    return added


# ----------------------------------------------------------------------------------------------------------
# Configs: google's albert_config.json <-> transformers.AlbertConfig kwargs

_GOOGLE_KEYS = (
    "vocab_size",
    "embedding_size",
    "hidden_size",
    "num_hidden_layers",
    "num_hidden_groups",
    "num_attention_heads",
    "intermediate_size",
    "inner_group_num",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
)


def hf_kwargs_from_google(google: dict) -> dict:
    """google's `gelu` is the tanh approximation, which HF calls `gelu_new`."""
    kw = {k: google[k] for k in _GOOGLE_KEYS if k in google}
    act = google.get("hidden_act", "gelu")
    kw["hidden_act"] = {"gelu": "gelu_new"}.get(act, act)
    return kw


def google_from_hf(hf_config) -> dict:
    out = {k: getattr(hf_config, k) for k in _GOOGLE_KEYS}
    act = hf_config.hidden_act
    if act not in ("gelu_new", "gelu_pytorch_tanh", "relu", "tanh"):
        raise UserError(
            f"hidden_act '{act}' has no exact google-research/albert equivalent",
            fix="google's 'gelu' is the tanh approximation: use hidden_act='gelu_new'",
        )
    out["hidden_act"] = "gelu" if act.startswith("gelu") else act
    return out


def check_shapes(variables: dict[str, np.ndarray], kw: dict, where: str) -> None:
    """The config must describe the checkpoint: vocab, embedding, hidden and FFN sizes from the shapes."""
    expect = {
        "bert/embeddings/word_embeddings": (kw["vocab_size"], kw["embedding_size"]),
        "bert/embeddings/position_embeddings": (kw["max_position_embeddings"], kw["embedding_size"]),
        "bert/pooler/dense/kernel": (kw["hidden_size"], kw["hidden_size"]),
        "bert/encoder/transformer/group_0/inner_group_0/ffn_1/intermediate/dense/kernel": (
            kw["hidden_size"],
            kw["intermediate_size"],
        ),
    }
    for name, shape in expect.items():
        got = tuple(np.shape(variables.get(name, ())))
        if got != shape:
            raise UserError(
                f"{name} has shape {got}, the ALBERT config says {shape}",
                where=where,
                fix="give the albert_config.json that belongs to this checkpoint (--albert-config)",
            )


# What a config must agree on to describe a checkpoint (the weights alone do not show heads, layers, activation).
ARCHITECTURE_KEYS = (
    "num_attention_heads",
    "num_hidden_layers",
    "hidden_act",
    "hidden_size",
    "embedding_size",
    "intermediate_size",
    "vocab_size",
    "num_hidden_groups",
    "inner_group_num",
)
# google-research/albert modeling.get_activation; its "gelu" is the tanh approximation.
GOOGLE_ACTIVATIONS = ("gelu", "relu", "tanh", "linear")
_REQUIRED = (
    "vocab_size",
    "embedding_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
)


def read_google_config(path) -> dict:
    """google's albert_config.json, checked: required keys, positive integers, heads dividing the hidden size,
    an activation google's modeling.py knows. Every problem is a one-line UserError naming the file and key."""
    import json
    from pathlib import Path

    where = str(path)
    try:
        google = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"not valid JSON ({str(exc).splitlines()[0]})", where=where) from None
    if not isinstance(google, dict):
        raise UserError("not a JSON object of ALBERT settings", where=where)
    fix = "use the albert_config.json that came with the checkpoint (google-research/albert format)"
    for key in _REQUIRED:
        if key not in google:
            raise UserError(f"'{key}' is missing", where=where, fix=fix)
    for key in (*_REQUIRED, "num_hidden_groups", "inner_group_num", "type_vocab_size"):
        value = google.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"'{key}' is {value!r}, not a positive integer", where=where, fix=fix)
    if google["hidden_size"] % google["num_attention_heads"]:
        raise UserError(
            f"hidden_size {google['hidden_size']} is not divisible by num_attention_heads "
            f"{google['num_attention_heads']}",
            where=where,
            fix=fix,
        )
    act = google.get("hidden_act", "gelu")
    if act not in GOOGLE_ACTIVATIONS:
        hint = " (google's 'gelu' is already the tanh approximation HF calls gelu_new)" if act == "gelu_new" else ""
        raise UserError(
            f"'hidden_act' is {act!r}, google's ALBERT knows {', '.join(GOOGLE_ACTIVATIONS)}{hint}",
            where=where,
            fix='write "hidden_act": "gelu"' if act.startswith("gelu") else fix,
        )
    return google
