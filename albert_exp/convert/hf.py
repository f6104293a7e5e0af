"""`tf-to-hf`, `hf-to-tf` and loading any of the three layouts as an `AlbertForPreTraining` (`--init-from`).

Every conversion is checked numerically: the Hugging Face model and google's forward pass (numpy, on the TF
variables as read back from disk) must give the same MLM and SOP logits on probe inputs, to `tolerance`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from albert_exp.convert import mapping, reference, tf_checkpoint
from albert_exp.errors import UserError

TOLERANCE = 1e-4  # float32 model vs float64 reference; observed differences are ~1e-6


def is_hf_dir(path: str | Path) -> bool:
    return (Path(path) / "config.json").is_file()


def build_model(hf_kwargs: dict):
    from transformers import AlbertConfig

    from albert_exp.modeling import build

    return build("pretraining", config=AlbertConfig(**hf_kwargs))


def load_hf(path: str | Path):
    from albert_exp.hf_local import check_model_dir, load_model

    check_model_dir(path)  # before importing torch: a bad directory is reported in a second
    from transformers import AlbertForPreTraining

    return load_model(AlbertForPreTraining, path, use_safetensors=True)


def _state_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}


def load_state(model, state: dict[str, np.ndarray], keep_missing_sop: bool = False) -> None:
    """Load a mapped numpy state into `model` (strict, except the tied decoder and, if asked, the SOP head)."""
    import torch

    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    result = model.load_state_dict(tensors, strict=False)
    allowed = {"predictions.decoder.weight", "predictions.decoder.bias"}  # tied to the embeddings / bias
    if keep_missing_sop:
        allowed |= {"sop_classifier.classifier.weight", "sop_classifier.classifier.bias"}
    missing = set(result.missing_keys) - allowed
    if missing or result.unexpected_keys:
        raise RuntimeError(f"state mismatch: missing {sorted(missing)}, unexpected {result.unexpected_keys}")
    model.tie_weights()


def pretraining_logits(model, probe: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """MLM and SOP logits (float64) of an AlbertForPreTraining on probe inputs (reference.probe_inputs)."""
    import torch

    model.eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(probe["input_ids"]),
            attention_mask=torch.from_numpy(probe["input_mask"]),
            token_type_ids=torch.from_numpy(probe["segment_ids"]),
        )
    return out.prediction_logits.double().numpy(), out.sop_logits.double().numpy()


def max_difference(model, variables: dict[str, np.ndarray], google_config: dict, seed: int = 0) -> float:
    """Largest absolute difference of MLM and SOP logits between `model` and google's forward pass."""
    probe = reference.probe_inputs(google_config["vocab_size"], google_config["max_position_embeddings"], seed)
    ref_mlm, ref_sop = reference.forward(variables, google_config, **probe)
    mlm, sop = pretraining_logits(model, probe)
    mask = probe["input_mask"].astype(bool)  # padded positions are not outputs anyone reads
    return float(max(np.abs(mlm - ref_mlm)[mask].max(), np.abs(sop - ref_sop).max()))


def _check(diff: float, what: str) -> None:
    if not diff <= TOLERANCE:
        raise UserError(
            f"{what}: outputs differ by {diff:.3g} (> {TOLERANCE})",
            fix="the checkpoint and the ALBERT config do not match (heads, layers, activation?)",
        )


def google_config_for(source: str | Path, albert_config: str | Path | None) -> tuple[dict, Path]:
    """google's albert_config.json: the one given, else the one next to the checkpoint. A given one must agree
    with the one next to the checkpoint where there is one: head and layer counts and the activation cannot be
    read from the weights, and the numerical check would read the same wrong config."""
    beside = tf_checkpoint.find_albert_config(source)
    path = Path(albert_config) if albert_config else beside
    if path is None or not path.is_file():
        raise UserError(
            "no albert_config.json for this checkpoint" if path is None else "albert_config.json not found",
            where=str(source if path is None else path),
            fix="pass --albert-config (layer and head counts cannot be read from the weights)",
        )
    google = mapping.read_google_config(path)
    if beside is not None and beside.resolve() != path.resolve():
        found = mapping.read_google_config(beside)
        defaults = {"num_hidden_groups": 1, "inner_group_num": 1, "hidden_act": "gelu"}  # google's
        for key in mapping.ARCHITECTURE_KEYS:
            given, there = google.get(key, defaults.get(key)), found.get(key, defaults.get(key))
            if there is not None and given != there:
                raise UserError(
                    f"{key} is {given!r}, but the albert_config.json beside the checkpoint ({beside}) says {there!r}",
                    where=str(path),
                    fix="drop --albert-config to use the config beside the checkpoint, or fix the one you give",
                )
    return google, path


def check_config_matches(google: dict, variables: dict[str, np.ndarray], path: Path) -> dict:
    """The config must describe the checkpoint's variables: group counts and the shapes they imply."""
    groups, inner = mapping.count_groups(variables)
    google.setdefault("num_hidden_groups", groups)
    google.setdefault("inner_group_num", inner)
    if (google["num_hidden_groups"], google["inner_group_num"]) != (groups, inner):
        raise UserError(
            f"config says {google['num_hidden_groups']} groups x {google['inner_group_num']} inner, "
            f"the checkpoint has {groups} x {inner}",
            where=str(path),
        )
    mapping.check_shapes(variables, mapping.hf_kwargs_from_google(google), str(path))
    return google


def model_from_tf(source: str | Path, albert_config: str | Path | None = None):
    """(AlbertForPreTraining, info) from a TF checkpoint or TF-Hub module, numerically checked."""
    tf_checkpoint.resolve_checkpoint(source)  # a wrong path first: "no TF checkpoint found"
    google, config_path = google_config_for(source, albert_config)  # checked before TensorFlow is imported
    variables = mapping.model_variables(tf_checkpoint.read_variables(source))
    google = check_config_matches(google, variables, config_path)
    kw = mapping.hf_kwargs_from_google(google)
    model = build_model(kw)
    state, absent = mapping.tf_to_hf_arrays(
        variables, kw.get("num_hidden_groups", 1), kw.get("inner_group_num", 1), kw["hidden_size"], str(source)
    )
    load_state(model, state, keep_missing_sop=bool(absent))
    info = {"source": str(source), "missing_sop_head": bool(absent), "variables": len(variables)}
    if not absent:  # without the SOP head google's graph is incomplete: check the MLM path through zeros
        info["max_abs_diff"] = max_difference(model, variables, google)
    else:
        probe = dict(variables)
        mapping.add_missing_sop_head(probe)
        import torch

        with torch.no_grad():
            saved = [p.clone() for p in model.sop_classifier.parameters()]
            for p in model.sop_classifier.parameters():
                p.zero_()
            info["max_abs_diff"] = max_difference(model, probe, google)
            for p, s in zip(model.sop_classifier.parameters(), saved, strict=True):
                p.copy_(s)
    _check(info["max_abs_diff"], f"TF -> HF conversion of {source}")
    return model, info


def tf_to_hf(source: str | Path, out_dir: str | Path, albert_config: str | Path | None = None) -> dict:
    from albert_exp.checkpoint import save_weights

    model, info = model_from_tf(source, albert_config)
    out = Path(out_dir)
    save_weights(model, out)  # safetensors; a full disk is one line, as every other write's
    return {**info, "model_dir": str(out)}


def hf_to_tf(source: str | Path, out_dir: str | Path, global_step: int = 0, optimizer_slots: bool = True) -> dict:
    """HF AlbertForPreTraining dir -> google's checkpoint layout (+ albert_config.json), checked on read-back."""
    model = load_hf(source)
    cfg = model.config
    google = mapping.google_from_hf(cfg)
    variables = mapping.hf_to_tf_arrays(_state_numpy(model), cfg.num_hidden_groups, cfg.inner_group_num)
    full = mapping.with_optimizer_slots(variables, global_step) if optimizer_slots else variables
    out = Path(out_dir)
    prefix = tf_checkpoint.write_checkpoint(out / f"model.ckpt-{global_step}", full)
    (out / "albert_config.json").write_text(json.dumps(google, indent=2, sort_keys=True) + "\n")
    back = mapping.model_variables(tf_checkpoint.read_variables(prefix))
    diff = max_difference(model, back, google)
    _check(diff, f"HF -> TF conversion of {source}")
    return {
        "source": str(source),
        "checkpoint": prefix,
        "albert_config": str(out / "albert_config.json"),
        "model_variables": len(variables),
        "total_variables": len(full),
        "max_abs_diff": diff,
    }


def load_any(path: str | Path, albert_config: str | Path | None = None):
    """(AlbertForPreTraining, info) from an HF dir, a TF checkpoint or a TF-Hub module dir."""
    if is_hf_dir(path):
        return load_hf(path), {"source": str(path), "format": "hf"}
    if tf_checkpoint.is_tf_checkpoint(path):
        model, info = model_from_tf(path, albert_config)
        return model, {**info, "format": "tf"}
    raise UserError(
        "not a Hugging Face ALBERT dir, a TF checkpoint or a TF-Hub module",
        where=str(path),
        fix="give a dir with config.json, a model.ckpt-N prefix, or a module dir with variables/",
    )
