"""Loading Hugging Face models and tokenizers from local directories only, with one-line errors.

    model = load_model(AlbertForTokenClassification, "runs/toy/finetune/best_model", where="finetune.model_dir")
    tokenizer = load_tokenizer("runs/toy/vocab/tokenizer")

`from_pretrained` treats a path that does not exist as a Hub model id: it retries the Hub for half a minute
and, with a network, would download someone else's model. Every load in albert_exp goes through here:
`local_files_only=True`, the directory is checked first, and a bad directory (no config.json, truncated or
garbage model.safetensors, a config that does not match the weights, heads not dividing the hidden size) is
a UserError naming the directory and what to do, instead of a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from albert_exp.errors import UserError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
FIX = "give a local directory written by save_pretrained (config.json + model.safetensors); nothing is downloaded"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_model_dir(path: str | Path, where: str | None = None) -> Path:
    """The directory of a saved HF model, or a UserError saying what is missing."""
    p = Path(path)
    label = f"{where}: {p}" if where else str(p)
    if not p.is_dir():
        raise UserError("model directory not found" if not p.exists() else "not a directory", where=label, fix=FIX)
    config = p / "config.json"
    if not config.is_file():
        raise UserError("no config.json in the model directory", where=label, fix=FIX)
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config.json is not valid JSON ({_first_line(exc)})", where=str(config), fix=FIX) from None
    if not isinstance(cfg, dict):
        raise UserError("config.json is not a JSON object", where=str(config), fix=FIX)
    hidden, heads = cfg.get("hidden_size"), cfg.get("num_attention_heads")
    if isinstance(hidden, int) and isinstance(heads, int) and (heads < 1 or hidden % heads):
        raise UserError(
            f"hidden_size {hidden} is not divisible by num_attention_heads {heads}",
            where=str(config),
            fix="fix config.json: the config that was saved with these weights has other values",
        )
    if not any((p / f).is_file() for f in WEIGHT_FILES):
        raise UserError("no model weights (model.safetensors) in the model directory", where=label, fix=FIX)
    if (p / "model.safetensors").is_file():
        _check_safetensors(p / "model.safetensors", cfg)
    return p


def _check_safetensors(path: Path, cfg: dict) -> None:
    """Without torch: the file is complete (8-byte header size, JSON header, every tensor's bytes present), and
    the ALBERT weights it holds have the shapes config.json implies."""
    fix = "the file is truncated or not a safetensors file: copy or save the model again"
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if size < 8 or n <= 0 or 8 + n > size:
                raise ValueError("header size beyond the end of the file")
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise UserError(
            f"model.safetensors is truncated or not a safetensors file ({exc})", where=str(path), fix=fix
        ) from None
    if 8 + n + end > size:
        raise UserError(
            f"model.safetensors is truncated ({size} bytes, its header describes {8 + n + end})",
            where=str(path),
            fix=fix,
        )
    get = cfg.get
    expect = {  # AlbertModel's weights whose shapes follow from the config (any head: prefix "albert.")
        "albert.embeddings.word_embeddings.weight": (get("vocab_size"), get("embedding_size")),
        "albert.encoder.embedding_hidden_mapping_in.weight": (get("hidden_size"), get("embedding_size")),
        "albert.pooler.weight": (get("hidden_size"), get("hidden_size")),
        "albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.weight": (
            get("intermediate_size"),
            get("hidden_size"),
        ),
    }
    for name, shape in expect.items():
        got = header.get(name, {}).get("shape")
        if got is not None and None not in shape and tuple(got) != shape:
            raise UserError(
                f"{name} has shape {tuple(got)} in model.safetensors, config.json implies {shape}",
                where=str(path.parent),
                fix="use the config.json saved with these weights",
            )


def _mismatch(cls: Any, p: Path) -> str:
    """The first weight whose shape differs from what config.json describes (for the error message)."""
    try:
        from safetensors import safe_open
        from transformers import AutoConfig

        model = cls(AutoConfig.from_pretrained(str(p), local_files_only=True))
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        with safe_open(str(p / "model.safetensors"), "pt") as f:
            for k in f.keys():
                got = tuple(f.get_slice(k).get_shape())
                if k in expected and expected[k] != got:
                    return f"{k} has shape {got} in model.safetensors, config.json implies {expected[k]}"
    except Exception:  # only for the message: the load already failed
        pass
    return "the weights do not match config.json (hidden_size, vocab_size, layers?)"


def load_model(cls: Any, path: str | Path, where: str | None = None, **kwargs: Any) -> Any:
    """`cls.from_pretrained(path, local_files_only=True, **kwargs)` with one-line errors."""
    p = check_model_dir(path, where)
    try:
        return cls.from_pretrained(str(p), local_files_only=True, **kwargs)
    except Exception as exc:  # safetensors, torch and transformers raise many types for a bad file
        text = _first_line(exc)
        if "ignore_mismatched_sizes" in text or "size mismatch" in text:
            text = _mismatch(cls, p)
        elif "deserializ" in text or "header" in text or "safetensor" in type(exc).__name__.lower():
            text = f"model.safetensors is truncated or not a safetensors file ({text})"
        raise UserError(f"cannot load the model: {text}", where=str(p), fix=FIX) from None


def load_tokenizer(path: str | Path, where: str | None = None, cls: Any = None, **kwargs: Any) -> Any:
    """A tokenizer from a local directory (AutoTokenizer unless `cls` is given), with one-line errors."""
    p = Path(path)
    label = f"{where}: {p}" if where else str(p)
    fix = "run `albert-exp vocab`, or give a local tokenizer directory (tokenizer_config.json + spiece.model)"
    if not p.is_dir():
        raise UserError("tokenizer directory not found", where=label, fix=fix)
    if cls is None:
        from transformers import AutoTokenizer as cls
    try:
        return cls.from_pretrained(str(p), local_files_only=True, **kwargs)
    except Exception as exc:
        raise UserError(f"cannot load the tokenizer: {_first_line(exc)}", where=label, fix=fix) from None
