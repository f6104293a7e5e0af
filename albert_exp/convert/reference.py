"""google-research/albert's forward pass in numpy, straight from TF variable names (float64).

Used to check a conversion numerically against the *TF layout* rather than only round-tripping through our
own mapping: a transposed kernel or a swapped LayerNorm would survive a round trip but not this check.
It follows modeling.py / run_pretraining.py: tanh-approximated gelu, additive -10000 attention mask,
layers sharing parameters by group, MLM head tied to the word embeddings, SOP head on the pooled output.
"""

from __future__ import annotations

import numpy as np


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _act(name: str):
    return {"gelu": _gelu, "relu": lambda x: np.maximum(x, 0), "tanh": np.tanh, "linear": lambda x: x}[name]


def _ln(x: np.ndarray, v: dict, scope: str, eps: float = 1e-12) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * v[f"{scope}/gamma"] + v[f"{scope}/beta"]


def _dense(x: np.ndarray, v: dict, scope: str) -> np.ndarray:
    return x @ v[f"{scope}/kernel"] + v[f"{scope}/bias"]


def forward(
    variables: dict[str, np.ndarray],
    config: dict,
    input_ids: np.ndarray,
    input_mask: np.ndarray,
    segment_ids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(MLM logits [B, T, vocab], SOP logits [B, 2]) of google's ALBERT with `config` (albert_config.json)."""
    v = {k: np.asarray(a, dtype=np.float64) for k, a in variables.items()}
    act = _act(config.get("hidden_act", "gelu"))
    h_size, heads = config["hidden_size"], config["num_attention_heads"]
    layers, groups = config["num_hidden_layers"], config.get("num_hidden_groups", 1)
    inner = config.get("inner_group_num", 1)
    b, t = input_ids.shape
    x = v["bert/embeddings/word_embeddings"][input_ids]
    x = x + v["bert/embeddings/token_type_embeddings"][segment_ids]
    x = x + v["bert/embeddings/position_embeddings"][:t][None]
    x = _ln(x, v, "bert/embeddings/LayerNorm")
    if "bert/encoder/embedding_hidden_mapping_in/kernel" in v:
        x = _dense(x, v, "bert/encoder/embedding_hidden_mapping_in")
    adder = (1.0 - input_mask[:, None, None, :].astype(np.float64)) * -10000.0
    d = h_size // heads
    for layer in range(layers):
        group = int(layer / layers * groups)
        for i in range(inner):
            s = f"bert/encoder/transformer/group_{group}/inner_group_{i}"
            q, k, val = (
                _dense(x, v, f"{s}/attention_1/self/{n}").reshape(b, t, heads, d).transpose(0, 2, 1, 3)
                for n in ("query", "key", "value")
            )
            logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + adder
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            ctx = (probs @ val).transpose(0, 2, 1, 3).reshape(b, t, h_size)
            attn = _ln(_dense(ctx, v, f"{s}/attention_1/output/dense") + x, v, f"{s}/LayerNorm")
            ffn = _dense(
                act(_dense(attn, v, f"{s}/ffn_1/intermediate/dense")), v, f"{s}/ffn_1/intermediate/output/dense"
            )
            x = _ln(ffn + attn, v, f"{s}/LayerNorm_1")
    pooled = np.tanh(_dense(x[:, 0], v, "bert/pooler/dense"))
    hidden = _ln(act(_dense(x, v, "cls/predictions/transform/dense")), v, "cls/predictions/transform/LayerNorm")
    mlm = hidden @ v["bert/embeddings/word_embeddings"].T + v["cls/predictions/output_bias"]
    sop = pooled @ v["cls/seq_relationship/output_weights"].T + v["cls/seq_relationship/output_bias"]
    return mlm, sop


def probe_inputs(
    vocab_size: int, max_positions: int, seed: int = 0, batch: int = 3, length: int = 16
) -> dict[str, np.ndarray]:
    """A few random sequences with two segments and some padding (so the mask path is exercised)."""
    rng = np.random.default_rng(seed)
    t = min(length, max_positions)
    ids = rng.integers(0, vocab_size, size=(batch, t))
    mask = np.ones((batch, t), dtype=np.int64)
    mask[0, t // 2 :] = 0  # one padded row
    seg = np.zeros((batch, t), dtype=np.int64)
    seg[:, t // 3 :] = 1
    return {"input_ids": ids, "input_mask": mask, "segment_ids": seg * mask}
