"""Fine-tuning loop: seeded reproducibility, exact resume after an interruption, head-only training."""

from __future__ import annotations

import math

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
    "finetune.min_steps=0",  # the epochs a test names, however few steps its tiny split makes (default: 1,000)
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


def test_min_steps_raises_the_epochs_of_a_small_split_only(tmp_path, tiny_tokenizer, splits):
    """A split of k steps an epoch with min_steps 3k + 1 trains 4 epochs, the learning-rate schedule spanning the
    4k steps, val evaluated as often as `epochs` asks (after epochs 2 and 4); a split that takes more steps in
    `epochs` trains `epochs`, each evaluated."""
    k = math.ceil(len(splits["train"]) / 16)  # batch 16
    tracker = FakeTracker()
    cfg = load_config(None, TINY + ["finetune.epochs=2", f"finetune.min_steps={3 * k + 1}", "finetune.warmup_ratio=0"])
    out = finetune.train(cfg, tiny_tokenizer, splits["train"], splits["val"], tmp_path / "a", tracker)
    assert [h["epoch"] for h in out["history"]] == [2, 4]
    assert [step for step, _ in tracker.metrics["finetune/train_loss"]] == [k, 2 * k, 3 * k, 4 * k]
    assert [step for step, _ in tracker.metrics["val/phrase_f1"]] == [2 * k, 4 * k]
    assert out["best_epoch"] in (2, 4)
    assert tracker.params["derived.epochs"] == "4"
    (step, lr), *_ = tracker.metrics["finetune/lr"]
    assert (step, lr) == (1, pytest.approx(0.003 * (4 * k - 1) / (4 * k)))  # decay over 4k steps, not 2k
    assert finetune.planned_epochs(cfg.finetune, steps_per_epoch=2 * k) == 2  # 2 epochs reach min_steps already
    default = load_config(None, ["finetune.epochs=3"]).finetune  # min_steps 1,000
    assert [finetune.planned_epochs(default, spe) for spe in (1, 300, 334, 10_000)] == [1000, 4, 3, 3]
    assert finetune.planned_epochs(load_config(None, ["finetune.min_steps=0"]).finetune, steps_per_epoch=1) == 5


def test_a_run_lengthened_by_min_steps_resumes_to_the_same_result(tmp_path, tiny_tokenizer, splits):
    """Killed after its first evaluation (epoch 2 of 4), the run resumes from that checkpoint to what an
    uninterrupted run computes."""
    k = math.ceil(len(splits["train"]) / 16)
    longer = ("finetune.epochs=2", f"finetune.min_steps={3 * k + 1}")
    full, _ = _train(tmp_path / "full", tiny_tokenizer, splits, *longer)

    def stop_at_first_evaluation(epoch, metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", tiny_tokenizer, splits, *longer, hook=stop_at_first_evaluation)
    resumed, _ = _train(tmp_path / "cut", tiny_tokenizer, splits, *longer)
    assert [h["epoch"] for h in resumed["history"]] == [2, 4]
    for x, y in zip(full["history"], resumed["history"], strict=True):
        assert x == pytest.approx(y, rel=1e-6, abs=1e-9)


def test_head_only_leaves_the_encoder_untouched(tmp_path, tiny_tokenizer, splits):
    cfg = load_config(None, TINY + ["finetune.epochs=1", "finetune.train_encoder=false"])
    torch.manual_seed(cfg.seed)
    before = finetune.build_model(cfg, tiny_tokenizer).state_dict()
    _, out = _train(tmp_path, tiny_tokenizer, splits, "finetune.epochs=1", "finetune.train_encoder=false")
    from transformers import AlbertForTokenClassification

    after = AlbertForTokenClassification.from_pretrained(out / "best_model").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("albert."))
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])


def test_pretrained_embeddings_stay_and_random_ones_train(tmp_path, tiny_tokenizer, splits):
    """freeze_embeddings (the default) keeps a checkpoint's word embeddings and trains the rest; from random
    weights (no model_dir: the scratch control) it does not apply: random embeddings hold nothing worth keeping."""
    from transformers import AlbertForTokenClassification

    cfg = load_config(None, TINY)
    assert cfg.finetune.freeze_embeddings
    torch.manual_seed(cfg.seed)
    finetune.build_model(cfg, tiny_tokenizer).save_pretrained(tmp_path / "ckpt")
    before = AlbertForTokenClassification.from_pretrained(tmp_path / "ckpt").state_dict()
    words = "albert.embeddings.word_embeddings.weight"
    _, out = _train(
        tmp_path / "pre", tiny_tokenizer, splits, "finetune.epochs=1", f"finetune.model_dir={tmp_path / 'ckpt'}"
    )
    after = AlbertForTokenClassification.from_pretrained(out / "best_model").state_dict()
    assert torch.equal(before[words], after[words])
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "albert.embeddings.position_embeddings.weight" in changed and "classifier.weight" in changed
    _, out = _train(tmp_path / "fresh", tiny_tokenizer, splits, "finetune.epochs=1")
    fresh = AlbertForTokenClassification.from_pretrained(out / "best_model").state_dict()
    torch.manual_seed(cfg.seed)
    assert not torch.equal(finetune.build_model(cfg, tiny_tokenizer).state_dict()[words], fresh[words])


def test_classifier_dropout_is_the_setting_whatever_the_start(tmp_path, tiny_tokenizer):
    cfg = load_config(None, TINY + ["finetune.classifier_dropout=0.3"])
    fresh = finetune.build_model(cfg, tiny_tokenizer)
    fresh.config.classifier_dropout_prob = 0.0  # as a pretraining checkpoint's config has it
    fresh.save_pretrained(tmp_path / "ckpt")
    loaded = finetune.build_model(cfg, tiny_tokenizer, model_dir=tmp_path / "ckpt")
    assert fresh.dropout.p == loaded.dropout.p == 0.3


def test_device_and_precision_choices(monkeypatch):
    """auto: CUDA when present, else the CPU; precision auto: bf16 where the card has it natively, fp16 (with a
    gradient scaler) where not, fp32 on the CPU; what the host cannot do is a UserError naming the setting."""
    from albert_exp import devices
    from albert_exp.errors import UserError

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto") == devices.resolve_device("cpu") == cpu
    with pytest.raises(UserError, match=r"finetune.device: device cuda asked for, but this machine has no CUDA"):
        devices.resolve_device("cuda", "finetune.device")
    assert devices.resolve_precision("auto", cpu) == "fp32"
    assert devices.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        devices.resolve_precision("fp16", cpu)
    assert devices.grad_scaler(cpu, "fp32") is None
    gpu = torch.device("cuda", 0)
    for native, expected in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(devices, "bf16_native", lambda d, n=native: n)
        assert devices.resolve_precision("auto", gpu) == expected
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "Tesla T4")
    with pytest.raises(UserError, match="Tesla T4 has no native bf16"):
        devices.resolve_precision("bf16", gpu)
    model = finetune.build_model(load_config(None, TINY), _Tok())
    assert devices.on_device(model, "auto") is model  # the CPU: the model as it is


class _Tok:
    pad_token_id = 0

    def __len__(self) -> int:
        return 300


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path, tiny_tokenizer, splits):
    from tests.test_bad_inputs import cli_error

    csvs = [f"finetune.{s}_csv={tmp_path / 'train.csv'}" for s in ("train", "val", "test")]
    write_labelled_csv(tmp_path / "train.csv", ((r.text, r.phrases) for r in labelled_rows(1, "train", 8, 0.5, 2)))
    tok = f"finetune.tokenizer_dir={tiny_tokenizer.name_or_path}"
    args = [
        "finetune",
        "--workdir",
        tmp_path / "w",
        "--set",
        " ".join(["stages=[finetune]", *csvs, tok, "finetune.device=cuda"]),
    ]
    cli_error(args, ["finetune.device", "no CUDA device", "set it to auto"], cwd=tmp_path, env={})


def test_steps_split_a_global_batch_the_same_way_for_any_world(tiny_tokenizer, splits):
    """world x accumulation parts of batch / parts rows; a rank takes parts rank, rank + world, ...; a short last
    batch's empty parts are one row without labels. So 2 ranks x 1 and 1 process x 2 run the same parts."""
    from albert_exp.labels import IGNORE

    data, pad = splits["train"], tiny_tokenizer.pad_token_id
    order = list(range(len(data)))[:40]  # batch 16: 16, 16, 8 rows
    one = finetune.Steps(data, order, 16, 4, 0, 1, pad)
    ranks = [finetune.Steps(data, order, 16, 4, r, 2, pad) for r in (0, 1)]
    assert len(one) == 3
    for b in range(3):
        parts, n = one[b]
        assert [g for g, _ in parts] == [0, 1, 2, 3]
        assert n == sum(int((y != IGNORE).sum()) for _, x in parts for y in x["labels"])
        by_rank = [r[b] for r in ranks]
        assert all(m == n for _, m in by_rank)  # every rank knows the global batch's token count
        mine = {g: x for r, _ in by_rank for g, x in r}
        assert sorted(mine) == [0, 1, 2, 3] and [g for g, _ in by_rank[1][0]] == [1, 3]
        for g, x in parts:
            assert all(torch.equal(x[k], mine[g][k]) for k in x)
    last = one[2][0]
    assert [len(x["input_ids"]) for _, x in last] == [4, 4, 1, 1]  # the empty parts: one unlabelled row
    assert (last[3][1]["labels"] == IGNORE).all()


def test_accumulation_computes_what_one_batch_computes(tmp_path, tiny_tokenizer, splits):
    """The same global batch in 1 or 4 micro-batches (each padded to its own longest row): the same losses and
    weights to float round-off. Without dropout: its masks are drawn per part (the same parts for 2 ranks and 1
    process x 2: tests/test_finetune_ddp.py), so 1 part and 4 parts draw different ones."""
    from safetensors.torch import load_file

    no_dropout = ("finetune.epochs=2", "finetune.classifier_dropout=0")
    a, out_a = _train(tmp_path / "a", tiny_tokenizer, splits, *no_dropout)
    b, out_b = _train(tmp_path / "b", tiny_tokenizer, splits, *no_dropout, "finetune.gradient_accumulation_steps=4")
    for x, y in zip(a["history"], b["history"], strict=True):
        assert x == pytest.approx(y, rel=1e-4, abs=1e-6)
    wa, wb = (load_file(str(o / "checkpoints" / "step-00000002" / "model.safetensors")) for o in (out_a, out_b))
    dweight = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert dweight < 1e-4, dweight


def test_fp16_with_a_gradient_scaler_trains_and_resumes_exactly(tmp_path, tiny_tokenizer, splits, monkeypatch):
    """The path of cards without bf16 (the recipe's T4): fp16 autocast and a GradScaler, here on the CPU (torch
    runs both there); the scaler's state travels in the checkpoint and a resumed run equals an uninterrupted one
    (the toy never overflows, so its scale stays at the initial one: this does not tell a restored scale from a
    fresh one)."""
    from albert_exp import devices

    monkeypatch.setattr(devices, "resolve_precision", lambda choice, device, where="": "fp16")
    full, out = _train(tmp_path / "full", tiny_tokenizer, splits, "finetune.epochs=2")
    assert full["precision"] == "fp16" and full["history"][-1]["finetune/train_loss"] < 0.69

    def stop_after_first(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", tiny_tokenizer, splits, "finetune.epochs=2", hook=stop_after_first)
    import json

    saved = json.loads(next((tmp_path / "cut" / "ft" / "checkpoints").glob("step-*/trainer_state.json")).read_text())
    assert saved["scaler"]["scale"] > 0
    resumed, _ = _train(tmp_path / "cut", tiny_tokenizer, splits, "finetune.epochs=2")
    assert resumed["history"] == full["history"]
