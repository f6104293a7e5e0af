"""The scratch control differs from the pretrained fine-tune only where it must: its start and its embeddings."""

from __future__ import annotations

from albert_exp import scratch
from albert_exp.config import load_config


def test_scratch_trains_its_random_embeddings_and_keeps_every_other_setting(tmp_path):
    cfg = load_config(
        None,
        [
            f"workdir={tmp_path}",
            "finetune.model_dir=/models/pretrained",
            "finetune.freeze_embeddings=true",
            "finetune.learning_rate=0.001",
            "finetune.epochs=3",
            "finetune.select_metric=phrase_f1",
            "finetune.augment_mentions=1",
        ],
    )
    f = scratch.scratch_config(cfg).finetune
    assert f.model_dir is None and f.freeze_embeddings is False
    assert (f.learning_rate, f.epochs, f.select_metric, f.augment_mentions) == (0.001, 3, "phrase_f1", 1)
    assert f.tokenizer_dir == "/models/pretrained"  # the pretrained model's vocabulary, as fine-tuning reads it
    assert scratch.STAGE.output_link(cfg) == tmp_path / "scratch" / "finetune"  # its own output beside finetune's
