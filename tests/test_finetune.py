"""Fine-tuning loop: seeded reproducibility, exact resume after an interruption, head-only training."""

from __future__ import annotations

import pytest
import torch

from albert_exp import finetune
from albert_exp.config import load_config
from albert_exp.corpus_files import write_labelled_csv
from albert_exp.data import encode
from albert_exp.toy import labelled_rows
from albert_exp.tracking import FakeTracker

TINY = [
    "model.embedding_size=16",
    "model.hidden_size=32",
    "model.num_hidden_layers=2",
    "model.num_attention_heads=2",
    "model.intermediate_size=64",
    "model.max_position_embeddings=64",
    "finetune.batch_size=16",
    "finetune.learning_rate=0.003",
    "finetune.max_seq_length=48",
]


@pytest.fixture(scope="module")
def splits(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("ft")
    out = {}
    for split, n in (("train", 96), ("val", 32)):
        rows = labelled_rows(1, split, n, 0.5, 2)
        write_labelled_csv(d / f"{split}.csv", ((r.text, r.phrases) for r in rows))
        out[split] = encode(d / f"{split}.csv", tiny_tokenizer, max_seq_length=48)
    return out


def _train(tmp_path, tokenizer, splits, *extra, hook=None):
    cfg = load_config(None, TINY + list(extra))
    out = tmp_path / "ft"
    return finetune.train(cfg, tokenizer, splits["train"], splits["val"], out, FakeTracker(), hook), out


def test_same_seed_same_losses(tmp_path, tiny_tokenizer, splits):
    a, _ = _train(tmp_path / "a", tiny_tokenizer, splits, "finetune.epochs=2")
    b, _ = _train(tmp_path / "b", tiny_tokenizer, splits, "finetune.epochs=2")
    c, _ = _train(tmp_path / "c", tiny_tokenizer, splits, "finetune.epochs=2", "seed=7")
    assert a["history"] == b["history"]
    assert a["history"] != c["history"]
    assert a["history"][-1]["finetune/train_loss"] < a["history"][0]["finetune/train_loss"]


def test_interrupted_run_resumes_to_the_same_result(tmp_path, tiny_tokenizer, splits):
    full, _ = _train(tmp_path / "full", tiny_tokenizer, splits, "finetune.epochs=3")

    def stop_after_first(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", tiny_tokenizer, splits, "finetune.epochs=3", hook=stop_after_first)
    resumed, out = _train(tmp_path / "cut", tiny_tokenizer, splits, "finetune.epochs=3")
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    for x, y in zip(full["history"], resumed["history"], strict=True):
        assert x == pytest.approx(y, rel=1e-6, abs=1e-9)
    # a different config does not resume from that checkpoint
    other, _ = _train(tmp_path / "cut", tiny_tokenizer, splits, "finetune.epochs=3", "finetune.learning_rate=0.001")
    assert other["history"][0] != resumed["history"][0]


def test_head_only_leaves_the_encoder_untouched(tmp_path, tiny_tokenizer, splits):
    cfg = load_config(None, TINY + ["finetune.epochs=1", "finetune.train_encoder=false"])
    torch.manual_seed(cfg.seed)
    before = finetune.build_model(cfg, tiny_tokenizer).state_dict()
    _, out = _train(tmp_path, tiny_tokenizer, splits, "finetune.epochs=1", "finetune.train_encoder=false")
    from transformers import AlbertForTokenClassification

    after = AlbertForTokenClassification.from_pretrained(out / "best_model").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("albert."))
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])


def test_frozen_embeddings_stay_and_the_rest_trains(tmp_path, tiny_tokenizer, splits):
    frozen = ["finetune.epochs=1", "finetune.freeze_embeddings=true"]
    cfg = load_config(None, TINY + frozen)
    torch.manual_seed(cfg.seed)
    before = finetune.build_model(cfg, tiny_tokenizer).state_dict()
    _, out = _train(tmp_path, tiny_tokenizer, splits, *frozen)
    from transformers import AlbertForTokenClassification

    after = AlbertForTokenClassification.from_pretrained(out / "best_model").state_dict()
    words = "albert.embeddings.word_embeddings.weight"
    assert torch.equal(before[words], after[words])
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "albert.embeddings.position_embeddings.weight" in changed and "classifier.weight" in changed


def test_classifier_dropout_is_the_setting_whatever_the_start(tmp_path, tiny_tokenizer):
    cfg = load_config(None, TINY + ["finetune.classifier_dropout=0.3"])
    fresh = finetune.build_model(cfg, tiny_tokenizer)
    fresh.config.classifier_dropout_prob = 0.0  # as a pretraining checkpoint's config has it
    fresh.save_pretrained(tmp_path / "ckpt")
    loaded = finetune.build_model(cfg, tiny_tokenizer, model_dir=tmp_path / "ckpt")
    assert fresh.dropout.p == loaded.dropout.p == 0.3
