"""Typed configuration: one dataclass per concern, loaded from an experiment YAML plus overrides.

An experiment YAML is a *sparse* override of the defaults below (see experiments/toy.yaml):

    name: toy                 # MLflow experiment name
    finetune:
      epochs: 4

Command-line overrides use dotted keys (`--set finetune.epochs=4`) or the stage's own flags
(`albert-exp finetune --epochs 4`). An unknown key or a bad value is a ConfigError naming the key,
the file and the allowed values. Nothing here imports anything heavy.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from albert_exp.errors import ConfigError


def setting(default: Any, help: str, in_key: bool = True) -> Any:
    """A config field with its help text: `albert-exp <stage> --help` and the README's table of settings show it
    (scripts/readme_tables.py writes the table; tests/test_project.py keeps it in sync). A list default is
    copied for each config. `in_key=False`: the setting only changes where or how fast a stage runs (a path, a
    worker count, threads), never what its output holds, so it stays out of the stage's identity (paths to
    inputs count through the digests of what they hold: albert_exp/identity.py)."""
    metadata = {"help": help, "in_key": in_key}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def identity_settings(section: Any) -> dict[str, Any]:
    """A config section's settings that decide what a stage's output holds (those not marked in_key=False)."""
    return {
        f.name: to_dict(getattr(section, f.name))
        if dataclasses.is_dataclass(getattr(section, f.name))
        else getattr(section, f.name)
        for f in dataclasses.fields(section)
        if f.metadata.get("in_key", True) and not f.metadata.get("internal")
    }


@dataclass(frozen=True)
class ModelConfig:
    """ALBERT architecture for a model built from scratch (ignored when a model directory is given)."""

    vocab_size: int | None = setting(None, "vocabulary size; none: taken from the tokenizer")
    embedding_size: int = setting(128, "size of the factorised token embeddings (ALBERT's E)")
    hidden_size: int = setting(768, "size of the hidden layers (H)")
    num_hidden_layers: int = setting(12, "transformer layers (all sharing one group's weights by default)")
    num_attention_heads: int = setting(12, "attention heads; must divide hidden_size")
    intermediate_size: int = setting(3072, "size of the feed-forward layer")
    num_hidden_groups: int = setting(1, "groups of layers with their own weights (1: all layers share)")
    max_position_embeddings: int = setting(512, "longest sequence the position embeddings cover")
    hidden_dropout_prob: float = setting(0.0, "dropout on hidden states (ALBERT v2 uses none)")
    attention_probs_dropout_prob: float = setting(0.0, "dropout on attention probabilities")

    def validate(self, key: str) -> None:
        _require(
            self.hidden_size % self.num_attention_heads == 0,
            f"{key}.hidden_size",
            f"{self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}",
            "choose num_attention_heads that divides hidden_size (e.g. hidden 768 with 12 heads)",
        )


@dataclass(frozen=True)
class CorpusConfig:
    """Corpus stage: shard real text files, or generate the synthetic toy corpus (`toy: true`)."""

    toy: bool = setting(False, "generate the synthetic toy corpus instead of reading `inputs`")
    inputs: list[str] = setting(
        [],
        "text files or globs (plain or .gz): one sentence per line, a blank line between documents",
        in_key=False,
    )
    lines_per_shard: int = setting(1_000_000, "lines per output shard (shards are cut between documents)")
    # Real corpora (albert_exp/corpus_text.py): normalisation recorded in the manifest, bad-line policy.
    nfkc: bool = setting(False, "Unicode NFKC (full-width forms, ligatures, compatibility characters)")
    collapse_whitespace: bool = setting(True, "runs of whitespace -> one space, ends stripped")
    lowercase: bool = setting(False, "usually left to the vocabulary's normalisation (vocab.lowercase)")
    on_bad_line: Literal["error", "skip"] = setting(
        "error", "a line that is not UTF-8: stop, naming file and line, or skip it (counted)"
    )
    max_document_lines: int = setting(100_000, "a longer document (a file without blank lines) is cut here")
    # Toy generator: sizes of the pretraining corpus and of the labelled splits.
    toy_mode: Literal["parts", "realistic"] = setting(
        "parts",
        "toy dish names: parts (composed from a few hundred parts) or realistic (several cuisines, unseen "
        "test words, typos, emoji, code-switching, distractors; albert_exp/toy_real.py)",
    )
    toy_documents: int = setting(3000, "documents of the unlabelled (pretraining) corpus")
    toy_train_rows: int = setting(4000, "labelled training reviews of the toy corpus")
    toy_val_rows: int = setting(600, "labelled validation reviews of the toy corpus")
    toy_test_rows: int = setting(600, "labelled test reviews of the toy corpus")
    negative_share: float = setting(0.5, "share of reviews without any dish (the recipe: about half)")
    max_dishes_per_review: int = setting(3, "most dishes one toy review mentions")

    def validate(self, key: str) -> None:
        _require(0.0 <= self.negative_share <= 1.0, f"{key}.negative_share", "must be in [0, 1]")
        for name in (
            "lines_per_shard",
            "max_document_lines",
            "toy_documents",
            "toy_train_rows",
            "toy_val_rows",
            "toy_test_rows",
            "max_dishes_per_review",
        ):
            _require(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")


@dataclass(frozen=True)
class VocabConfig:
    """SentencePiece vocabulary with ALBERT's special tokens, plus a Hugging Face tokenizer directory."""

    vocab_size: int = setting(30000, "SentencePiece pieces, ALBERT's specials included")
    model_type: Literal["unigram", "bpe"] = setting("unigram", "SentencePiece model type")
    lowercase: bool = setting(
        True,
        "lowercase text; one normalisation for pretraining data, fine-tuning and serving, stored with the tokenizer",
    )
    keep_accents: bool = setting(
        False,
        "keep accents (false: strip them, as google's ALBERT); stored with the tokenizer",
    )
    character_coverage: float = setting(0.9995, "share of characters SentencePiece covers (the rest map to <unk>)")
    hard_vocab_limit: bool = setting(
        True,
        "stop when the corpus cannot give vocab_size pieces (false: accept the smaller vocabulary SentencePiece "
        "can make; SentencePiece's own setting)",
    )
    sample_sentences: int = setting(2_000_000, "SentencePiece trains on a seeded sample of this many sentences")
    from_spm: str | None = setting(
        None,
        "an existing spiece.model (e.g. of a TF-Hub ALBERT module) used instead of training one; "
        "lowercase/keep_accents must then say how its text was normalised (google's: true/false)",
    )

    def validate(self, key: str) -> None:
        _require(self.vocab_size >= 16, f"{key}.vocab_size", "must be >= 16")
        _require(0.9 <= self.character_coverage <= 1.0, f"{key}.character_coverage", "must be in [0.9, 1]")


@dataclass(frozen=True)
class PretrainingDataConfig:
    """TFRecord shards with google-research/albert's features (SOP, n-gram whole-word masking), one per
    corpus shard, in parallel over local processes or a Ray cluster."""

    input: str | None = setting(
        None,
        "the corpus manifest.json that `albert-exp corpus` wrote (not a text file); none: "
        "<workdir>/corpus/manifest.json",
        in_key=False,
    )
    tokenizer_dir: str | None = setting(None, "tokenizer directory; none: <workdir>/vocab/tokenizer", in_key=False)
    output_dir: str | None = setting(None, "where the shards go; none: <workdir>/pretraining_data", in_key=False)
    max_seq_length: int | None = setting(
        None,
        "tokens per instance; none: pretrain.max_seq_length (the two must agree)",
    )
    max_predictions_per_seq: int | None = setting(
        None,
        "most masked tokens per instance; none: pretrain.max_predictions_per_seq",
    )
    masked_lm_prob: float = setting(0.15, "share of tokens masked")
    short_seq_prob: float = setting(0.1, "share of instances made shorter than max_seq_length (as google's)")
    dupe_factor: int = setting(40, "passes over the corpus, each with fresh masks and segment splits")
    ngram: int = setting(3, "longest n-gram (in words) masked as one span")
    favor_shorter_ngram: bool = setting(True, "mask shorter n-grams more often: p(n) ~ 1/n")
    whole_word_mask: bool = setting(True, "mask whole words (all pieces of a word together)")
    block_lines: int = setting(20000, "lines per block of documents (instances are shuffled within a block)")
    compress: bool = setting(
        False,
        "GZIP TFRecords (TF reads them with compression_type=GZIP; google's run_pretraining.py does not: gunzip first)",
    )
    workers: int = setting(0, "local processes; 0: one per CPU", in_key=False)
    executor: Literal["local", "ray"] = setting(
        "local", "local processes, or a Ray cluster (needs the `ray` extra)", in_key=False
    )
    address: str | None = setting(None, "Ray cluster address (ray executor); none: a local Ray instance", in_key=False)
    mode: Literal["static", "dynamic"] = setting(
        "static",
        "static: TFRecords with dupe_factor masked copies (what google's run_pretraining.py reads: the TPU "
        "path); dynamic: tokenised documents once (Arrow), pairs and masks drawn per epoch by the pretrain "
        "loader",
    )
    pairing: Literal["pack", "split", "google"] = setting(
        "pack",
        "one-sentence chunks: pack (pack one-sentence documents, join a lone last sentence: full, balanced), "
        "split (split them at a word: balanced, shorter), google (B from a random document, label 1)",
    )
    min_split_words: int = setting(2, "pack: words kept on each side when a one-sentence chunk is split at a word")
    pack_below_tokens: int | None = setting(
        None,
        "pack: shorter documents are packed too; none: (max_seq_length - 3) // 4",
    )

    def resolved(self, pretrain: PretrainConfig) -> PretrainingDataConfig:
        """The settings instance making runs with: the lengths left empty taken from `pretrain`, the packing
        threshold derived from the sequence length."""
        seq = self.max_seq_length or pretrain.max_seq_length
        return dataclasses.replace(
            self,
            max_seq_length=seq,
            max_predictions_per_seq=self.max_predictions_per_seq or pretrain.max_predictions_per_seq,
            pack_below_tokens=self.pack_below_tokens if self.pack_below_tokens is not None else max(seq - 3, 0) // 4,
        )

    def validate(self, key: str) -> None:
        _require(self.min_split_words >= 1, f"{key}.min_split_words", "must be >= 1")
        _require((self.pack_below_tokens or 0) >= 0, f"{key}.pack_below_tokens", "must be >= 0")
        _require(0.0 < self.masked_lm_prob < 1.0, f"{key}.masked_lm_prob", "must be in (0, 1)")
        _require(0.0 <= self.short_seq_prob <= 1.0, f"{key}.short_seq_prob", "must be in [0, 1]")
        for name in ("dupe_factor", "ngram", "block_lines"):
            _require(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        _require(self.workers >= 0, f"{key}.workers", "must be >= 0 (0: one per CPU)")
        for name in ("max_seq_length", "max_predictions_per_seq"):
            _require(getattr(self, name) is None or getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining settings shared by `pretrain` (PyTorch) and `tpu-logs command` (google's run_pretraining.py).

    Steps, warm-up and learning rate left empty are derived from the batch size by the linear scaling rule
    (albert_exp/scaling.py) from the reference run below.
    """

    input: list[str] = setting(
        [],
        "TFRecord files or globs, or a dynamic manifest; empty: <workdir>/pretraining_data",
        in_key=False,
    )
    init_from: str | None = setting(None, "HF dir, TF checkpoint or TF-Hub module dir", in_key=False)
    max_seq_length: int = setting(64, "tokens per sequence (as the TFRecords were made)")
    max_predictions_per_seq: int = setting(10, "masked positions per sequence (as the TFRecords were made)")
    batch_size: int = setting(512, "sequences per optimiser step (over all processes)")
    num_train_steps: int | None = setting(None, "optimiser steps of the schedule; none: scaled from the reference run")
    num_warmup_steps: int | None = setting(None, "linear warm-up steps; none: scaled from the reference run")
    learning_rate: float | None = setting(None, "peak learning rate; none: scaled from the reference run")
    reference_batch_size: int = setting(4096, "the reference run's batch size (the scaling rule's base)")
    reference_steps: int = setting(125_000, "the reference run's steps")
    reference_warmup_steps: int = setting(3_125, "the reference run's warm-up steps")
    reference_learning_rate: float = setting(0.00176, "the reference run's learning rate")
    save_checkpoints_steps: int = setting(1000, "steps between checkpoints")
    output_dir: str | None = setting(
        None, "checkpoints go here; none: <workdir>/pretrain (for TPU: a gs:// URI)", in_key=False
    )
    # Cloud TPU: `albert-exp tpu-logs command` prints google's run_pretraining.py command from this section
    # (input: gs:// TFRecord globs; init_from: a TF checkpoint; output_dir: a gs:// URI).
    tpu_name: str | None = setting(
        None,
        "Cloud TPU name (`albert-exp tpu-logs command` prints google's run_pretraining.py command from this section)",
        in_key=False,
    )
    tpu_zone: str | None = setting(None, "Cloud TPU zone", in_key=False)
    gcp_project: str | None = setting(None, "Google Cloud project of the TPU", in_key=False)
    num_tpu_cores: int = setting(8, "TPU cores (8: a v2-8 or v3-8)", in_key=False)
    iterations_per_loop: int = setting(
        100, "steps per TPU loop; the console prints the loss once per loop", in_key=False
    )
    # PyTorch loop (albert_exp/pretrain/). Optimisation as google's ALBERT: LAMB, weight decay except
    # LayerNorm and biases, global-norm clipping, linear warm-up then polynomial (power 1) decay to 0.
    eval_input: list[str] = setting([], "held-out TFRecords; empty: no eval/ metrics", in_key=False)
    albert_config: str | None = setting(
        None, "google's albert_config.json for a TF init_from without one beside it", in_key=False
    )
    gradient_accumulation_steps: int = setting(1, "batch_size is per optimiser step; micro-batch = batch / this")
    weight_decay: float = setting(0.01, "LAMB weight decay (not on LayerNorm and biases)")
    max_grad_norm: float = setting(1.0, "global gradient-norm clipping")
    poly_power: float = setting(1.0, "power of the polynomial decay to 0 after warm-up (1: linear)")
    precision: Literal["auto", "fp32", "bf16"] = setting("auto", "auto: bf16 autocast on CUDA, fp32 on CPU")
    log_every_steps: int = setting(100, "steps between train/ metrics")
    eval_every_steps: int = setting(1000, "steps between eval/ metrics (with eval_input)")
    eval_batches: int = setting(20, "batches of eval_input per evaluation")
    keep_checkpoints: int = setting(3, "the last K are kept, plus the best", in_key=False)
    log_checkpoints: bool = setting(True, "each checkpoint's HF model as an MLflow artifact", in_key=False)
    num_workers: int = setting(2, "loader processes = data streams; a resumed run must use the same number")
    shuffle_block: int = setting(4096, "records read from a shard and shuffled together")
    skip_corrupt: bool = setting(False, "skip corrupt records (counted); false: one stops the run, naming it")
    resume: bool = setting(True, "continue from the last checkpoint in output_dir if there is one", in_key=False)
    plateau_window: int = setting(0, "steps; 0 = no plateau early stopping")
    plateau_min_improvement: float = setting(0.01, "relative drop of the smoothed loss required over the window")
    plateau_smoothing: float = setting(0.98, "EMA factor of the smoothed training loss")
    max_steps: int | None = setting(None, "stop (and checkpoint) here even if the schedule is longer", in_key=False)
    torch_threads: int = setting(0, "torch threads; 0: torch's default", in_key=False)
    compile: bool = setting(False, "torch.compile the model (GPU runs)")

    def validate(self, key: str) -> None:
        for name in (
            "max_seq_length",
            "max_predictions_per_seq",
            "batch_size",
            "reference_batch_size",
            "reference_steps",
            "save_checkpoints_steps",
            "gradient_accumulation_steps",
            "log_every_steps",
            "eval_every_steps",
            "eval_batches",
            "keep_checkpoints",
            "shuffle_block",
        ):
            _require(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        _require(
            self.batch_size % self.gradient_accumulation_steps == 0,
            f"{key}.gradient_accumulation_steps",
            f"must divide batch_size={self.batch_size}",
        )
        _require(
            self.num_workers >= 0 and self.plateau_window >= 0, f"{key}.num_workers/plateau_window", "must be >= 0"
        )
        _require(0.0 <= self.plateau_smoothing < 1.0, f"{key}.plateau_smoothing", "must be in [0, 1)")
        # Left empty (None) these are derived from the batch size; an explicit 0 or negative value is a mistake,
        # not a request for the derived value.
        derived = "leave it empty to derive it from the batch size, or give a valid value"
        for name in ("num_train_steps", "max_steps"):
            value = getattr(self, name)
            _require(value is None or value >= 1, f"{key}.{name}", f"{value} must be >= 1", derived)
        warmup = self.num_warmup_steps
        _require(warmup is None or warmup >= 0, f"{key}.num_warmup_steps", f"{warmup} must be >= 0", derived)
        lr = self.learning_rate
        _require(lr is None or 0 < lr < 1, f"{key}.learning_rate", f"{lr} must be in (0, 1)", derived)
        _require(self.reference_learning_rate > 0, f"{key}.reference_learning_rate", "must be > 0")
        _require(self.reference_warmup_steps >= 0, f"{key}.reference_warmup_steps", "must be >= 0")
        _require(
            self.max_grad_norm > 0 and self.weight_decay >= 0,
            f"{key}.max_grad_norm/weight_decay",
            "max_grad_norm must be > 0, weight_decay >= 0",
        )

    def scaled(self):
        """Steps, warm-up and lr: explicit values win, the rest follow the batch-size scaling rule."""
        from albert_exp.scaling import Scaled, scale_for_batch

        s = scale_for_batch(
            self.batch_size,
            reference_batch_size=self.reference_batch_size,
            reference_steps=self.reference_steps,
            reference_warmup_steps=self.reference_warmup_steps,
            reference_learning_rate=self.reference_learning_rate,
        )
        return Scaled(
            s.batch_size,
            self.num_train_steps or s.num_train_steps,
            s.num_warmup_steps if self.num_warmup_steps is None else self.num_warmup_steps,
            self.learning_rate or s.learning_rate,
        )


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning AlbertForTokenClassification (2 labels: outside / inside the wanted phrase)."""

    model_dir: str | None = setting(
        None, "HF ALBERT dir to start from; none: a fresh model from `model:`", in_key=False
    )
    tokenizer_dir: str | None = setting(None, "tokenizer directory; none: <workdir>/vocab/tokenizer", in_key=False)
    train_csv: str | None = setting(
        None, "labelled training CSV (text, phrase); none: <workdir>/corpus/train.csv", in_key=False
    )
    val_csv: str | None = setting(None, "labelled validation CSV; none: <workdir>/corpus/val.csv", in_key=False)
    test_csv: str | None = setting(None, "labelled test CSV; none: <workdir>/corpus/test.csv", in_key=False)
    text_column: str = setting("text", "CSV column holding the text")
    phrase_column: str = setting("phrase", "CSV column holding the wanted phrase(s)")
    phrase_separator: str = setting("|", "separates several phrases in one cell")
    case_insensitive: bool = setting(True, "match phrases in the text ignoring case")
    on_missing_phrase: Literal["drop", "error"] = setting(
        "drop",
        "a labelled phrase not found in its text: drop the row (counted) or stop",
    )
    max_seq_length: int = setting(64, "tokens per window (longer texts are read in overlapping windows)")
    batch_size: int = setting(32, "training windows per step")
    eval_batch_size: int = setting(128, "windows per evaluation batch", in_key=False)
    epochs: int = setting(5, "passes over the training split (more where min_steps asks for them)")
    min_steps: int = setting(
        1000,
        "optimiser steps to train at least: a small training split gets as many epochs as that takes (val "
        "evaluated about `epochs` times, the best kept), a large one `epochs`; 0: `epochs` alone",
    )
    learning_rate: float = setting(5e-5, "AdamW learning rate")
    weight_decay: float = setting(0.01, "AdamW weight decay")
    warmup_ratio: float = setting(0.0, "share of steps of linear warm-up")
    max_grad_norm: float = setting(1.0, "gradient-norm clipping")
    train_encoder: bool = setting(True, "train the encoder too; false: only the classification head is trained")
    freeze_embeddings: bool = setting(
        True,
        "keep the pretrained word embeddings as they are (unseen names stay near the seen ones pretraining put them "
        "by; README, the realistic toy); from random weights (no model_dir, the `scratch` stage) they are trained",
    )
    classifier_dropout: float = setting(
        0.1, "dropout before the tagging head, from scratch and from a checkpoint alike"
    )
    select_metric: Literal["token_accuracy", "phrase_f1"] = setting(
        "phrase_f1", "the val metric that picks the best epoch (both are logged; token_accuracy is the recipe's)"
    )
    max_train_rows: int | None = setting(None, "cap for quick runs")
    torch_threads: int = setting(0, "torch threads; 0: torch's default", in_key=False)
    gradient_accumulation_steps: int = setting(
        1,
        "batch_size is the global batch per optimiser step; each of N torchrun ranks runs this many micro-batches "
        "of batch_size / (N x this)",
    )
    device: Literal["auto", "cpu", "cuda"] = setting(
        "auto", "where training and evaluation run; auto: CUDA when present, else the CPU", in_key=False
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = setting(
        "auto",
        "autocast dtype; auto: bf16 on cards that have it, fp16 with a gradient scaler on those that do not, fp32 "
        "on the CPU",
    )
    num_workers: int = setting(
        0,
        "DataLoader processes that pad the batches (0: in the training process); pinned memory on CUDA",
        in_key=False,
    )
    # Phrase extraction (albert_exp/windows.py, albert_exp/words.py), the same in training, metrics and serving:
    window_stride: int = setting(
        16,
        "tokens shared by consecutive windows of a text longer than max_seq_length - 2 (phrase extraction is "
        "the same in training, metrics and serving)",
    )
    aggregation: Literal["first", "average", "max"] = setting(
        "average",
        "token -> word phrase probability (HF's names)",
    )
    augment_mentions: int = setting(
        1,
        "mention-replaced copies of each training review with a phrase (albert_exp/augment.py)",
    )

    def validate(self, key: str) -> None:
        for name in ("max_seq_length", "batch_size", "eval_batch_size", "epochs"):
            _require(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        _require(self.max_seq_length >= 8, f"{key}.max_seq_length", "must be >= 8")
        _require(self.min_steps >= 0, f"{key}.min_steps", "must be >= 0")
        _require(0 < self.learning_rate < 1, f"{key}.learning_rate", "must be in (0, 1)")
        _require(0 <= self.warmup_ratio < 1, f"{key}.warmup_ratio", "must be in [0, 1)")
        _require(self.max_grad_norm > 0, f"{key}.max_grad_norm", "must be > 0")
        _require(len(self.phrase_separator) >= 1, f"{key}.phrase_separator", "must not be empty")
        _require(
            0 <= self.window_stride <= (self.max_seq_length - 2) // 2,
            f"{key}.window_stride",
            f"must be in [0, (max_seq_length - 2) / 2 = {(self.max_seq_length - 2) // 2}]",
        )
        _require(self.augment_mentions >= 0, f"{key}.augment_mentions", "must be >= 0")
        _require(0 <= self.classifier_dropout < 1, f"{key}.classifier_dropout", "must be in [0, 1)")
        _require(self.gradient_accumulation_steps >= 1, f"{key}.gradient_accumulation_steps", "must be >= 1")
        _require(
            self.batch_size % self.gradient_accumulation_steps == 0,
            f"{key}.gradient_accumulation_steps",
            f"must divide batch_size {self.batch_size}",
        )
        _require(self.num_workers >= 0, f"{key}.num_workers", "must be >= 0")


@dataclass(frozen=True)
class TuneConfig:
    """Optuna search of the fine-tuning learning rate (log scale) and epochs; one nested MLflow run per trial."""

    n_trials: int = setting(
        20,
        "trials the study should finish (complete + pruned), counted over every worker and rerun",
    )
    timeout_s: int | None = setting(None, "this worker stops starting trials after this many seconds")
    lr_min: float = setting(1e-6, "smallest learning rate tried (log scale)")
    lr_max: float = setting(1e-3, "largest learning rate tried")
    epochs_min: int = setting(1, "fewest epochs tried")
    epochs_max: int = setting(8, "most epochs tried")
    objective: Literal["token_accuracy", "phrase_f1"] | None = setting(
        None,
        "val/<objective>, maximised; none: finetune.select_metric (then the search's base trial is the finetune run)",
    )
    storage: str = setting(
        "sqlite:///optuna.db",
        "Optuna storage URL; postgresql://user@host:port/db for several workers (needs the `postgres` extra)",
    )
    study_name: str | None = setting(
        None,
        "Optuna study name; none: <name>-<fingerprint of the finetune config, search space, data, code>",
    )
    worker: int = setting(0, "index of this worker: seeds its sampler differently (same seed = same random draws)")
    pruner_startup_trials: int = setting(2, "MedianPruner prunes nothing until this many trials have finished")
    pruner_warmup_epochs: int = setting(1, "... nor before a trial has reported this many epochs")
    heartbeat_s: int = setting(10, "seconds between a running trial's heartbeats")
    grace_s: int = setting(30, "a trial whose heartbeat is older than this is stale: failed, then retried")
    max_retry: int = setting(1, "retries of a trial that died (killed worker)")

    def validate(self, key: str) -> None:
        _require(self.n_trials >= 1, f"{key}.n_trials", "must be >= 1")
        _require(0 < self.lr_min <= self.lr_max < 1, f"{key}.lr_min/lr_max", "need 0 < lr_min <= lr_max < 1")
        _require(
            1 <= self.epochs_min <= self.epochs_max,
            f"{key}.epochs_min/epochs_max",
            "need 1 <= epochs_min <= epochs_max",
        )
        _require(
            "://" in self.storage,
            f"{key}.storage",
            f"{self.storage!r} is not a database URL "
            "(e.g. sqlite:///optuna.db or postgresql://user@127.0.0.1:5432/optuna)",
        )
        _require(
            self.heartbeat_s >= 1 and self.grace_s > self.heartbeat_s,
            f"{key}.heartbeat_s/grace_s",
            "need heartbeat_s >= 1 and grace_s > heartbeat_s",
        )
        _require(
            self.worker >= 0
            and self.max_retry >= 0
            and self.pruner_startup_trials >= 0
            and self.pruner_warmup_epochs >= 0,
            f"{key}.worker/max_retry/pruner_*",
            "must be >= 0",
        )


@dataclass(frozen=True)
class PromoteConfig:
    """Register a fine-tuned model, alias it `challenger`, and move `champion` only when it is better."""

    model_name: str | None = setting(None, "registered model; none: <name>-phrase-tagger")
    run_id: str | None = setting(
        None,
        "a finetune run to promote; none: the best trial of <workdir>/tune (else finetune)",
    )
    eval_csv: str | None = setting(None, "evaluation data; none: the finetune test CSV")
    metric: Literal["token_accuracy", "phrase_f1"] = setting(
        "token_accuracy",
        "the test metric the challenger and the champion are compared on",
    )
    margin: float = setting(0.0, "the challenger must beat the champion by more than this")
    force: bool = setting(False, "make the challenger champion whatever the scores (needs a reason)")
    reason: str = setting("", "why a forced promotion (recorded on the model version)")
    lock_timeout_s: float = setting(120.0, "wait this long for another promotion of the same model to finish")
    lock_stale_s: float = setting(900.0, "a lock from another host whose heartbeat is older than this is broken")

    def validate(self, key: str) -> None:
        _require(self.margin >= 0, f"{key}.margin", "must be >= 0")
        _require(
            not self.force or bool(self.reason.strip()),
            f"{key}.reason",
            "--force needs --reason '<why>' (it is recorded on the model version)",
        )
        _require(self.lock_timeout_s > 0 and self.lock_stale_s > 0, f"{key}.lock_timeout_s/lock_stale_s", "must be > 0")


@dataclass(frozen=True)
class BaselineConfig:
    """The classic baseline (`baseline` stage, albert_exp/baseline.py): the textbook linear-chain CRF (word
    window, affixes, shape, bigrams, every transition; characters in scripts without spaces: albert_exp/crf.py),
    trained on the finetune split; the regularisation is chosen by val phrase F1 over the grid c1 x c2."""

    # from none to strong: on the realistic toy the weakest L1 wins (c1 0, c2 0.01: test phrase F1 0.970)
    c1: list[float] = setting([0.0, 0.05, 0.5], "L1 penalties tried (0: none)")
    c2: list[float] = setting([0.001, 0.01, 0.1], "L2 penalties tried")
    max_iterations: int = setting(100, "L-BFGS iterations per candidate")

    def validate(self, key: str) -> None:
        _require(bool(self.c1) and bool(self.c2), f"{key}.c1/c2", "give at least one value each")
        _require(min(self.c1 + self.c2) >= 0, f"{key}.c1/c2", "must be >= 0")
        _require(self.max_iterations >= 1, f"{key}.max_iterations", "must be >= 1")


@dataclass(frozen=True)
class CurveConfig:
    """The label-efficiency curve (`curve` stage, albert_exp/curve.py): after one pretraining, each candidate on
    seeded, nested subsets of the labelled training split (val and test untouched); test phrase F1 and negative
    false-positive rate, mean ± spread over the seeds, per number of labelled reviews."""

    label_budgets: list[int | Literal["all"]] = setting(
        [100, 300, 1000, "all"], "labelled training reviews per point of the curve (`all`: the whole training split)"
    )
    seeds: int = setting(3, "subsets (each with its own fine-tuning seed) per budget: the spread is over them")
    candidates: list[Literal["pretrained", "scratch", "crf"]] = setting(
        ["pretrained", "scratch", "crf"],
        "what is trained on each subset: the pretrained tagger (finetune), the same from random weights, the CRF",
    )

    def validate(self, key: str) -> None:
        sizes = [b for b in self.label_budgets if b != "all"]
        _require(bool(self.label_budgets), f"{key}.label_budgets", "give at least one budget (e.g. [100, all])")
        _require(min(sizes, default=1) >= 1, f"{key}.label_budgets", "a budget must be >= 1 (or `all`)")
        _require(self.seeds >= 1, f"{key}.seeds", "must be >= 1")
        _require(bool(self.candidates), f"{key}.candidates", "name at least one of pretrained, scratch, crf")


# scratch: the fine-tuning again from random weights, the control for the pretraining gain (albert_exp/scratch.py)
# baseline: the classic CRF on the same split (albert_exp/baseline.py)
MAIN_STAGES = ("corpus", "vocab", "pretraining-data", "pretrain", "finetune", "scratch", "baseline", "tune", "promote")
# allowed in `stages:` but not run unless named: the label-efficiency curve (many fine-tunings, albert_exp/curve.py)
OPTIONAL_STAGES = ("curve",)
KNOWN_STAGES = MAIN_STAGES + OPTIONAL_STAGES


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: shared settings plus one section per stage."""

    name: str = setting("albert-exp", "MLflow experiment name")
    description: str = setting("", "what the experiment is for (shown with its runs)")
    seed: int = setting(42, "random seed of every stage")
    workdir: str | None = setting(None, "where stage outputs go; none: runs/<name>")
    jobs: int = setting(
        0,
        "stages `main` runs side by side as their inputs are ready; 0: what the machine allows (one per GPU, else "
        "CPU cores / the training stages' torch_threads)",
    )
    stages: list[str] = setting(
        list(MAIN_STAGES),
        "what `main` runs (any subset, in dependency order; a stage's inputs come from the subset or from the "
        "outputs already in the workdir); leave out pretraining-data + pretrain to fine-tune from scratch, "
        "tune + promote to stop after one fine-tuning run, everything after pretraining-data to prepare data; add "
        "`curve` (never run unless named) for the label-efficiency curve",
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    pretraining_data: PretrainingDataConfig = field(default_factory=PretrainingDataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    curve: CurveConfig = field(default_factory=CurveConfig)

    # Where the config came from (not a config key): shown in errors and logged as a tag.
    source: str = field(default="<defaults>", repr=False, compare=False, metadata={"internal": True})
    # The command line's KEY=VALUE overrides (not a config key): `main --jobs` hands them to the stage processes.
    overrides: tuple[str, ...] = field(default=(), repr=False, compare=False, metadata={"internal": True})

    def validate(self, key: str) -> None:
        unknown = [s for s in self.stages if s not in KNOWN_STAGES]
        _require(not unknown, "stages", f"unknown stage(s) {unknown}; allowed: {', '.join(KNOWN_STAGES)}")
        _require(self.jobs >= 0, "jobs", "must be >= 0 (0: what the machine allows)")
        d, p = self.pretraining_data, self.pretrain
        for name in ("max_seq_length", "max_predictions_per_seq"):  # the records must fit what pretraining reads
            given = getattr(d, name)
            _require(
                given is None or given == getattr(p, name),
                f"pretraining_data.{name}/pretrain.{name}",
                f"{given} vs {getattr(p, name)}: pretraining reads the records with its own value",
                f"set both to the same value (or leave pretraining_data.{name} empty: it then takes pretrain's)",
            )

    @property
    def root(self) -> Path:
        return Path(self.workdir or f"runs/{self.name}")

    @property
    def tune_objective(self) -> str:
        """The val metric the search maximises and its trials pick their best epoch by."""
        return self.tune.objective or self.finetune.select_metric

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage.replace("-", "_")


# ----------------------------------------------------------------------------------------------------------
# Loading, overriding and validating


def _require(ok: bool, key: str, what: str, fix: str | None = None) -> None:
    if not ok:
        first = key.split("/")[0]  # "a.b/c" names two keys; the fix names the first
        raise ConfigError(
            f"bad value for '{key}': {what}", fix=fix or f"change it in the YAML or with --set {first}=..."
        )


def config_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the annotated type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(tp), key)
    if origin is Literal:
        return _coerce_choice(value, typing.get_args(tp), key)
    if isinstance(value, RawValue) and tp is not str:  # a command-line value for a non-text field: as YAML
        return _coerce(_yaml_scalar(value), tp, key)
    if origin is list:
        return _coerce_list(value, typing.get_args(tp)[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"bad value for '{key}': expected a mapping of keys, got {value!r}")
        return _build(tp, value, key)
    scalar = _SCALARS.get(tp)
    if scalar is None:
        raise TypeError(f"unsupported config type {tp} for {key}")  # a programming error, not user input
    return scalar(value, tp, key)


def _coerce_union(value: Any, args: tuple, key: str) -> Any:
    """`X | None`: none/null (or YAML's null) is None; anything else is the first type that accepts it."""
    if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
        return None
    errors = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return _coerce(value, arg, key)
        except ConfigError as exc:
            errors.append(exc.what)
    raise ConfigError(errors[0] if errors else f"bad value for '{key}'")


def _coerce_choice(value: Any, allowed: tuple, key: str) -> Any:
    if value not in allowed:
        allowed_text = ", ".join(map(str, allowed))
        raise ConfigError(f"bad value for '{key}': {value!r}", fix=f"allowed values: {allowed_text}")
    return allowed[allowed.index(value)]


def _coerce_list(value: Any, item_tp: Any, key: str) -> list:
    """A YAML list, or comma-separated text (`--set pretrain.input=a.tfrecord,b.tfrecord`)."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v] if value else []
    if not isinstance(value, list):
        raise ConfigError(f"bad value for '{key}': expected a list, got {value!r}")
    return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]


def _coerce_bool(value: Any, tp: type, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ConfigError(f"bad value for '{key}': {value!r} is not a boolean", fix="allowed values: true, false")


def _coerce_number(value: Any, tp: type, key: str) -> int | float:
    """int or float; a bool is not a number, and an int field refuses 2.5 (but takes 2.0)."""
    if isinstance(value, bool):
        raise ConfigError(f"bad value for '{key}': {value!r} is not a number")
    try:
        out = tp(value) if not isinstance(value, str) or tp is float else int(value, 10)
    except (TypeError, ValueError):
        kind = "an integer" if tp is int else "a number"
        raise ConfigError(f"bad value for '{key}': {value!r} is not {kind}") from None
    if tp is int and isinstance(value, float) and value != out:
        raise ConfigError(f"bad value for '{key}': {value!r} is not an integer")
    return out


def _coerce_text(value: Any, tp: type, key: str) -> str:
    if isinstance(value, RawValue):  # the text as typed: `--set promote.reason=no` stays "no"
        return str.__str__(value)
    if isinstance(value, (dict, list)):
        raise ConfigError(f"bad value for '{key}': expected text, got {value!r}")
    return str(value)


_SCALARS = {bool: _coerce_bool, int: _coerce_number, float: _coerce_number, str: _coerce_text}


def _build(cls: type, data: dict, prefix: str) -> Any:
    fields = config_fields(cls)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            raise ConfigError(
                f"unknown key '{key}'", fix=f"allowed keys{' in ' + prefix if prefix else ''}: {', '.join(fields)}"
            )
        kwargs[k] = _coerce(v, hints[k], key)
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(prefix or cls.__name__)
    return obj


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class RawValue(str):
    """A value as typed on the command line. It is converted by the type of the field it sets: kept as typed for
    text fields (YAML would turn `no` into False and `1e-3` into a string), parsed as YAML for the others."""


def _yaml_scalar(raw: str) -> Any:
    text = str.__str__(raw)
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def parse_override(text: str, where: str) -> dict:
    """`finetune.epochs=4` -> {'finetune': {'epochs': RawValue('4')}}, converted by the field's type later."""
    if "=" not in text:
        raise ConfigError(f"bad override {text!r}", where=where, fix="write KEY=VALUE, e.g. finetune.epochs=4")
    key, raw = text.split("=", 1)
    value = RawValue(raw)
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Defaults <- experiment YAML <- overrides. Errors name the key and the file."""
    data: dict = {}
    source = "<defaults>"
    if path:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError("config file not found", where=source, fix="give an existing experiments/*.yaml")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"not valid YAML: {str(exc).splitlines()[0]}", where=source) from None
        if not isinstance(data, dict):
            raise ConfigError("the top level must be a mapping of keys", where=source)
    for ov in overrides or []:
        data = _merge(data, parse_override(ov, "command line"))
    try:
        cfg = _build(ExperimentConfig, data, "")
    except ConfigError as exc:
        raise ConfigError(exc.what, where=source + (" + command line" if overrides else ""), fix=exc.fix) from None
    return dataclasses.replace(cfg, source=source, overrides=tuple(overrides or ()))


def with_overrides(cfg: ExperimentConfig, changes: dict[str, Any]) -> ExperimentConfig:
    """`cfg` with `changes` ({"finetune.model_dir": path, "workdir": ...}), each changed section validated as when
    loaded: the one way derived configs are made (a config is frozen once loaded)."""
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            sections.setdefault(head, {})[rest] = value
        else:
            top[key] = value
    for name, fields in sections.items():
        section = getattr(cfg, name)
        unknown = set(fields) - set(config_fields(type(section)))
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(unknown)} in {name}", where="with_overrides")
        top[name] = dataclasses.replace(section, **fields)
        top[name].validate(name)
    out = dataclasses.replace(cfg, **top)
    out.validate("ExperimentConfig")
    return out


def to_dict(cfg: Any) -> dict:
    return {
        f: (to_dict(v) if dataclasses.is_dataclass(v) else v)
        for f in config_fields(type(cfg))
        for v in [getattr(cfg, f)]
    }


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'model': {'hidden_size': 32}} -> {'model.hidden_size': 32} (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def settings_table() -> str:
    """Every setting as markdown, one table per section: key, default, help (the README's table of settings)."""
    sections = [("top level", ExperimentConfig, "")]
    hints = typing.get_type_hints(ExperimentConfig)
    sections += [(f"`{n}:`", hints[n], f"{n}.") for n in config_fields(ExperimentConfig) if _is_section(hints[n])]
    out = []
    for title, cls, prefix in sections:
        out += [f"**{title}** {_first_line(cls.__doc__)}", "", "| key | default | what it sets |", "|---|---|---|"]
        types = typing.get_type_hints(cls)
        for name, f in config_fields(cls).items():
            if _is_section(types[name]):
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            choices = typing.get_args(types[name]) if typing.get_origin(types[name]) is Literal else ()
            text = f.metadata.get("help", "") + (f" (one of: {', '.join(choices)})" if choices else "")
            out.append(f"| `{prefix}{name}` | {_cell(_yaml_text(default))} | {_cell(text)} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp)


def _first_line(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _yaml_text(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return "`" + text.removesuffix("\n...").removesuffix("...").strip() + "`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")
