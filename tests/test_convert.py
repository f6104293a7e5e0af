"""Checkpoint conversion TF-Hub / TF (google-research/albert) / Hugging Face, on tiny models built here.

TensorFlow writes the TF-side checkpoints (tf.compat.v1 Saver, as google's code does); nothing is downloaded.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from albert_exp.cli import main as cli_main
from albert_exp.convert import hf, mapping, reference, tf_checkpoint
from albert_exp.errors import UserError

tf = pytest.importorskip("tensorflow")

TINY = dict(
    vocab_size=64,
    embedding_size=16,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=48,
    max_position_embeddings=32,
    hidden_act="gelu_new",
)
QUERY = "bert/encoder/transformer/group_0/inner_group_0/attention_1/self/query/kernel"


def tiny_hf(tmp_path, seed=0, **overrides):
    """A saved AlbertForPreTraining with every weight random (LayerNorms and biases too, so a swapped or
    untransposed tensor cannot hide behind ones and zeros)."""
    torch.manual_seed(seed)
    model = hf.build_model({**TINY, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    path = tmp_path / f"hf_{seed}"
    model.save_pretrained(str(path))
    return path, model


def saver_checkpoint(prefix, variables: dict[str, np.ndarray], scope: str = ""):
    """Write variables the way TF1 code does: graph variables + tf.compat.v1.train.Saver."""
    tf1 = tf.compat.v1
    prefix.parent.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        with tf1.variable_scope(scope or tf1.get_variable_scope()):
            for name, value in variables.items():
                tf1.get_variable(name, initializer=tf.constant(value))
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            return tf1.train.Saver().save(sess, str(prefix))


def outputs(model, probe):
    return hf.pretraining_logits(model, probe)


def test_name_map_has_googles_names_and_pure_round_trip():
    entries = mapping.name_map(2, 2)
    names = {e.tf for e in entries}
    assert QUERY in names and "bert/encoder/transformer/group_1/inner_group_1/LayerNorm_1/gamma" in names
    assert len({e.hf for e in entries}) == len(entries) == len(names)
    rng = np.random.default_rng(0)
    model = hf.build_model({**TINY, "num_hidden_groups": 2, "inner_group_num": 2})
    state = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in model.state_dict().items()}
    tf_vars = mapping.hf_to_tf_arrays(state, 2, 2)
    assert tf_vars[QUERY].shape == (32, 32)
    assert tf_vars["bert/encoder/transformer/group_0/inner_group_0/ffn_1/intermediate/dense/kernel"].shape == (32, 48)
    assert tf_vars["cls/seq_relationship/output_weights"].shape == (2, 32)  # not transposed
    back, absent = mapping.tf_to_hf_arrays(tf_vars, 2, 2, 32)
    assert absent == []
    for k, v in back.items():
        np.testing.assert_array_equal(v, state[k])


def test_hf_to_tf_to_hf_is_identical_and_matches_googles_forward(tmp_path):
    src, model = tiny_hf(tmp_path)
    res = hf.hf_to_tf(src, tmp_path / "tf", global_step=7)
    assert res["max_abs_diff"] < 1e-5
    variables = tf_checkpoint.read_variables(tmp_path / "tf")  # the dir: found via its `checkpoint` file
    shapes = dict(tf.train.list_variables(res["checkpoint"]))
    assert shapes[QUERY] == [32, 32] and shapes["bert/embeddings/word_embeddings"] == [64, 16]
    assert variables["global_step"].dtype == np.int64 and int(variables["global_step"]) == 7
    model_vars = mapping.model_variables(variables)
    for name in model_vars:
        assert not variables[f"{name}/adam_m"].any() and f"{name}/adam_v" in variables
    config = json.loads((tmp_path / "tf" / "albert_config.json").read_text())
    assert config["hidden_act"] == "gelu" and config["num_attention_heads"] == 2

    back = hf.tf_to_hf(res["checkpoint"], tmp_path / "hf_back")
    reloaded = hf.load_hf(back["model_dir"])
    original = model.state_dict()
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, original[k]), k
    probe = reference.probe_inputs(64, 32)
    for a, b in zip(outputs(model, probe), outputs(reloaded, probe), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_tf_checkpoint_written_by_tf_saver_converts_with_equal_outputs(tmp_path):
    """A checkpoint in google's layout written by TF's Saver (grouped layers: 2 groups x 2 inner)."""
    _, model = tiny_hf(tmp_path, seed=1, num_hidden_groups=2, inner_group_num=2, num_hidden_layers=4)
    variables = mapping.hf_to_tf_arrays({k: v.numpy() for k, v in model.state_dict().items()}, 2, 2)
    prefix = saver_checkpoint(tmp_path / "google" / "model.ckpt", variables)
    google = mapping.google_from_hf(model.config)
    (tmp_path / "google" / "albert_config.json").write_text(json.dumps(google))
    converted, info = hf.model_from_tf(prefix)
    assert info["max_abs_diff"] < 1e-5
    ref_mlm, ref_sop = reference.forward(variables, google, **reference.probe_inputs(64, 32, seed=3))
    mlm, sop = outputs(converted, reference.probe_inputs(64, 32, seed=3))
    mask = reference.probe_inputs(64, 32, seed=3)["input_mask"].astype(bool)
    np.testing.assert_allclose(mlm[mask], ref_mlm[mask], atol=1e-5)
    np.testing.assert_allclose(sop, ref_sop, atol=1e-5)


def test_a_transposed_kernel_or_a_foreign_activation_is_caught(tmp_path):
    src, model = tiny_hf(tmp_path)
    res = hf.hf_to_tf(src, tmp_path / "tf")
    cfg = json.loads((tmp_path / "tf" / "albert_config.json").read_text())
    # google's forward pass notices an untransposed (square, so shape-compatible) query kernel.
    variables = mapping.model_variables(tf_checkpoint.read_variables(res["checkpoint"]))
    assert hf.max_difference(model, variables, cfg) < 1e-5
    variables[QUERY] = variables[QUERY].T.copy()
    assert hf.max_difference(model, variables, cfg) > 1e-3
    # Exact erf-gelu has no google equivalent (google's "gelu" is the tanh approximation).
    src2, _ = tiny_hf(tmp_path, seed=5, hidden_act="gelu")
    with pytest.raises(UserError, match="gelu_new"):
        hf.hf_to_tf(src2, tmp_path / "tf2")


def test_hub_module_to_trainable_tf_checkpoint(tmp_path):
    _, model = tiny_hf(tmp_path, seed=2)
    variables = mapping.hf_to_tf_arrays({k: v.numpy() for k, v in model.state_dict().items()}, 1, 1)
    for name in mapping.SOP_VARIABLES:  # TF-Hub ALBERT modules ship without the SOP head
        del variables[name]
    module = tmp_path / "albert_hub"
    saver_checkpoint(module / "variables" / "variables", variables, scope="module")
    (module / "assets").mkdir()
    (module / "assets" / "albert_config.json").write_text(json.dumps(mapping.google_from_hf(model.config)))
    assert all(n.startswith("module/") for n, _ in tf.train.list_variables(str(module / "variables" / "variables")))

    out = tmp_path / "tf_init"
    result = cli_main(["convert", "hub-to-tf", "--source", str(module), "--out", str(out)])
    assert result == 0
    res = json.loads((out / "results.json").read_text())
    assert res["stripped_prefix"] == len(variables) and res["added_sop_head"] == list(mapping.SOP_VARIABLES)
    got = dict(tf.train.list_variables(res["checkpoint"]))
    reader = tf.train.load_checkpoint(res["checkpoint"])
    assert not any(n.startswith("module/") for n in got)
    assert reader.get_variable_to_dtype_map()["global_step"] == tf.int64
    assert got["cls/seq_relationship/output_weights"] == [2, 32] and got["cls/seq_relationship/output_bias"] == [2]
    assert not reader.get_tensor("cls/seq_relationship/output_weights").any()
    for name, value in variables.items():
        np.testing.assert_array_equal(reader.get_tensor(name), value)
        assert got[f"{name}/adam_m"] == list(value.shape) and got[f"{name}/adam_v"] == list(value.shape)
    assert len(got) == 3 * (len(variables) + 2) + 1

    # ... and google's run_pretraining.py restore path accepts it: init_from_checkpoint by name.
    tf1 = tf.compat.v1
    with tf.Graph().as_default():
        tf1.get_variable(QUERY, shape=[32, 32])
        tf1.train.get_or_create_global_step()
        tf1.train.init_from_checkpoint(res["checkpoint"], {"bert/": "bert/", "cls/": "cls/"})

    # The module also loads directly as an HF model (SOP head left at its fresh init).
    loaded, info = hf.load_any(module)
    assert info["format"] == "tf" and info["missing_sop_head"] and info["max_abs_diff"] < 1e-5


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["convert", "tf-to-hf", "--source", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "no TF checkpoint found" in capsys.readouterr().err
    src, _ = tiny_hf(tmp_path)
    (tmp_path / "ck").mkdir()
    hf.hf_to_tf(src, tmp_path / "ck")
    (tmp_path / "ck" / "albert_config.json").unlink()
    assert cli_main(["convert", "tf-to-hf", "--source", str(tmp_path / "ck"), "--out", str(tmp_path / "o")]) == 2
    assert "--albert-config" in capsys.readouterr().err
