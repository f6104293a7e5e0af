"""Vocabulary stage: a SentencePiece model with ALBERT's special tokens, and a Hugging Face tokenizer directory.

    albert-exp vocab --config experiments/toy.yaml

Reads the corpus shards listed in <workdir>/corpus/manifest.json, trains SentencePiece on a seeded sample of
sentences, and writes <workdir>/vocab/spiece.model (+ .vocab) and <workdir>/vocab/tokenizer/ (loadable with
`AlbertTokenizer.from_pretrained(dir)`, spiece.model copied in). Ids 0-4 are `<pad> <unk> [CLS] [SEP] [MASK]`
as in google's ALBERT. The normalisation (lower-case, accents) is one setting: the sample is normalised the way
the tokenizer normalises at run time, and the tokenizer stores the setting, so pretraining data, fine-tuning
and serving all tokenise identically.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import unicodedata
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from albert_exp.config import ExperimentConfig
from albert_exp.digest import file_digest
from albert_exp.errors import UserError
from albert_exp.stage import Context, Stage

SPECIALS = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]


@lru_cache(maxsize=1)
def _marks() -> dict[int, None]:
    # Every combining mark (General_Category M*): what tokenizers' StripAccents removes after NFKD. Not
    # `unicodedata.combining`, which misses marks of combining class 0 (most Thai vowels, Devanagari signs).
    # Marks live below U+20000 and in the variation selectors supplement (checked over all of Unicode 15).
    cps = [*range(0x20000), *range(0xE0100, 0xE01F0)]
    return {cp: None for cp in cps if unicodedata.category(chr(cp)).startswith("M")}


def normalize(text: str, *, lowercase: bool, keep_accents: bool) -> str:
    """Exactly what the HF ALBERT tokenizer does before SentencePiece (its tokenizer.json normalizer chain):
    `` and '' -> ", NFKD + strip every combining mark unless keep_accents, lower-case. SentencePiece is trained
    on text normalised by this, so training and run time see the same characters."""
    text = text.replace("``", '"').replace("''", '"')
    if not keep_accents and not text.isascii():
        text = unicodedata.normalize("NFKD", text).translate(_marks())
    return text.lower() if lowercase else text


# Scripts whose combining marks are accents (é -> e is harmless); elsewhere (Thai, Devanagari, Arabic...)
# marks are vowels and tones, and stripping them destroys the text.
_ACCENTED_SCRIPTS = ("LATIN", "GREEK", "CYRILLIC")


def _not_an_accent(mark: str, base: str) -> bool:
    """Marks whose removal loses no letter: variation selectors (emoji vs text style, U+FE0F), the combining
    keycap, and any mark on a symbol or emoji (ZWJ sequences join emoji with U+200D, which is not a mark)."""
    cp = ord(mark)
    if 0xFE00 <= cp <= 0xFE0F or 0xE0100 <= cp <= 0xE01EF or cp == 0x20E3:
        return True
    return bool(base) and unicodedata.category(base)[0] in "SZC"  # symbols (emoji), separators, controls


def check_accent_policy(lines: list[str], keep_accents: bool, where: str, max_share: float = 0.01) -> None:
    """Refuse keep_accents=false when it would strip vowel or tone marks from more than `max_share` of the
    sentences (e.g. Thai), instead of silently training a vocabulary on damaged text."""
    if keep_accents:
        return
    damaged: dict[str, int] = {}
    for line in lines:
        if line.isascii():
            continue
        base = ""
        for ch in unicodedata.normalize("NFKD", line):
            if unicodedata.category(ch).startswith("M"):
                if _not_an_accent(ch, base):
                    continue
                script = unicodedata.name(base, "UNKNOWN").split(" ")[0] if base else "UNKNOWN"
                if script not in _ACCENTED_SCRIPTS:
                    damaged[script] = damaged.get(script, 0) + 1
                    break
            else:
                base = ch
    n = sum(damaged.values())
    if lines and n / len(lines) > max_share:
        scripts = ", ".join(sorted(damaged, key=damaged.get, reverse=True)[:3])
        raise UserError(
            f"keep_accents: false would strip the vowel/tone marks of {scripts} text in "
            f"{n / len(lines):.0%} of the sentences",
            where=where,
            fix="set vocab.keep_accents: true (accents of Latin letters are then kept too)",
        )


def corpus_sentences(manifest_path: Path) -> Iterator[str]:
    from albert_exp.corpus_text import read_manifest

    manifest = read_manifest(manifest_path, flag="--workdir")
    for shard in manifest["shards"]:
        path = manifest_path.parent / shard["path"]
        with open(path, encoding="utf-8") as fh:
            n = 0
            try:
                for n, line in enumerate(fh, 1):  # noqa: B007 (n names the line of a decoding error)
                    if line.strip():
                        yield line.strip()
            except UnicodeDecodeError as exc:
                raise UserError(
                    f"not UTF-8 text after line {n} ({exc.reason})",
                    where=str(path),
                    fix="make shards with `albert-exp corpus` (on_bad_line: skip drops such lines)",
                ) from None


def sample(sentences: Iterator[str], k: int, seed: int) -> list[str]:
    """Reservoir sample of k sentences: one pass, memory bounded by k whatever the corpus size."""
    rng = random.Random(seed)
    out: list[str] = []
    for i, s in enumerate(sentences):
        if i < k:
            out.append(s)
        else:
            j = rng.randint(0, i)
            if j < k:
                out[j] = s
    return out


def train_sentencepiece(
    lines: list[str],
    prefix: Path,
    vocab_size: int,
    model_type: str,
    character_coverage: float,
    hard_vocab_limit: bool = False,
) -> None:
    """`<prefix>.model` trained on `lines`. With `hard_vocab_limit`, a corpus too small for `vocab_size` pieces is
    a user error saying how many it allows (SentencePiece's own setting; off, the vocabulary is silently smaller)."""
    import sentencepiece as spm

    if not lines:
        raise UserError("the corpus has no sentences", where=str(prefix.parent), fix="check the corpus stage output")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    text_file = prefix.parent / "sample.txt"
    text_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        spm.SentencePieceTrainer.train(
            input=str(text_file),
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=0,
            unk_id=1,
            bos_id=-1,
            eos_id=-1,
            control_symbols=SPECIALS[2:],
            hard_vocab_limit=hard_vocab_limit,
            shuffle_input_sentence=False,
            num_threads=1,
            minloglevel=2,
        )  # one thread, no shuffling: the same model on every run
    except RuntimeError as exc:
        raise _vocab_error(str(exc), vocab_size) from None
    finally:
        text_file.unlink(missing_ok=True)
    _drop_paths(prefix.with_suffix(".model"))


def _vocab_error(message: str, vocab_size: int) -> Exception:
    m = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if m:
        return UserError(
            f"vocab_size {vocab_size} is below the {m.group(2)} distinct characters (and specials) the sample needs",
            where="vocab.vocab_size",
            fix=f"set vocab.vocab_size above {m.group(2)}, or lower vocab.character_coverage",
        )
    m = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message)
    if m:
        return UserError(
            f"vocab_size {vocab_size} asked for, but the corpus sample allows at most {m.group(2)} pieces",
            where="vocab.vocab_size",
            fix=f"set vocab.vocab_size to {m.group(2)} or less, give a larger corpus (vocab.sample_sentences), or "
            "allow a smaller vocabulary with vocab.hard_vocab_limit=false",
        )
    return RuntimeError(message)


def _drop_paths(model: Path) -> None:
    """SentencePiece records where it was trained (the sample file and the output prefix, absolute paths) in the
    model: two workdirs with the same corpus would hold different bytes, and every stage after the vocabulary
    another identity. The model keeps the names only."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.read_bytes())
    spec = proto.trainer_spec
    inputs = [Path(i).name for i in spec.input]
    del spec.input[:]
    spec.input.extend(inputs)
    spec.model_prefix = Path(spec.model_prefix).name
    model.write_bytes(proto.SerializeToString())


def build_hf_tokenizer(spm_model: Path, out_dir: Path, *, lowercase: bool, keep_accents: bool):
    from transformers import AlbertTokenizer

    from albert_exp.hf_local import load_tokenizer

    # A fresh directory: from_pretrained prefers an existing tokenizer.json, which would silently keep the
    # previous vocabulary's tokenizer on a rerun.
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(spm_model, out_dir / "spiece.model")
    tok = load_tokenizer(out_dir, cls=AlbertTokenizer, do_lower_case=lowercase, keep_accents=keep_accents)
    tok.save_pretrained(str(out_dir))
    return tok


def check_sentencepiece(source: Path) -> dict[str, Any]:
    """An existing SentencePiece model (e.g. the spiece.model of a TF-Hub ALBERT module), checked: it loads and
    has ALBERT's special tokens at ids 0-4. Returns what `vocab` records about it."""
    import sentencepiece as spm

    if not source.is_file():
        raise UserError("SentencePiece model not found", where=str(source), fix="give the path of a spiece.model")
    sp = spm.SentencePieceProcessor()
    try:
        sp.load(str(source))
    except (OSError, RuntimeError) as exc:
        raise UserError(
            f"not a SentencePiece model ({str(exc).splitlines()[0][:120]})",
            where=str(source),
            fix="give a model written by SentencePiece (spiece.model)",
        ) from None
    pieces = [sp.id_to_piece(i) for i in range(min(5, sp.get_piece_size()))]
    if pieces != SPECIALS:
        raise UserError(
            f"ids 0-4 are {pieces}, ALBERT needs {SPECIALS}",
            where=str(source),
            fix="use an ALBERT SentencePiece model (google's, or one made by `albert-exp vocab`)",
        )
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp.serialized_model_proto())
    return {
        "source": str(source),
        "sha256": file_digest(source),
        "pieces": sp.get_piece_size(),
        "model_type": sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type).lower(),
        "spm_normalizer": proto.normalizer_spec.name,  # SentencePiece's own rule, applied inside encode()
    }


def _label(cfg: ExperimentConfig) -> str:
    v = cfg.vocab
    return f"from {Path(v.from_spm).name}" if v.from_spm else f"{v.model_type} {v.vocab_size}"


def inputs(cfg: ExperimentConfig) -> dict[str, Path | list[Path]]:
    paths: dict[str, Path | list[Path]] = {"corpus_manifest": cfg.stage_dir("corpus") / "manifest.json"}
    if cfg.vocab.from_spm:
        paths["spm"] = Path(cfg.vocab.from_spm)
    return paths


def prepare(ctx: Context) -> tuple[list[str], dict[str, Any] | None]:
    """The normalised sample sentences (and the imported SentencePiece model's facts), checked."""
    cfg = ctx.cfg
    v = cfg.vocab
    manifest = cfg.stage_dir("corpus") / "manifest.json"
    spm_info = None
    if v.from_spm:  # the corpus, when there is one, only measures the unknown-token rate
        spm_info = check_sentencepiece(Path(v.from_spm))
        n = min(v.sample_sentences, 20000)  # enough for the unknown-token rate
        lines = sample(corpus_sentences(manifest), n, cfg.seed) if manifest.is_file() else []
    else:
        lines = sample(corpus_sentences(manifest), v.sample_sentences, cfg.seed)
    check_accent_policy(lines, v.keep_accents, where=f"{cfg.source}: vocab.keep_accents")
    return [normalize(s, lowercase=v.lowercase, keep_accents=v.keep_accents) for s in lines], spm_info


def compute(ctx: Context) -> dict[str, Any]:
    cfg, tmp, tracker = ctx.cfg, ctx.work, ctx.tracker
    v = cfg.vocab
    lines, imported = ctx.prepared
    if v.from_spm:
        shutil.copyfile(v.from_spm, tmp / "spiece.model")
    else:
        train_sentencepiece(lines, tmp / "spiece", v.vocab_size, v.model_type, v.character_coverage, v.hard_vocab_limit)
    tok = build_hf_tokenizer(
        tmp / "spiece.model", tmp / "tokenizer", lowercase=v.lowercase, keep_accents=v.keep_accents
    )
    assert tok.convert_ids_to_tokens(list(range(5))) == SPECIALS, "special token ids differ from ALBERT's"
    unk = sum(t == tok.unk_token_id for s in lines[:2000] for t in tok(s)["input_ids"])
    total = sum(len(tok(s)["input_ids"]) for s in lines[:2000])
    metrics = {"vocab/size": len(tok), "vocab/sample_sentences": len(lines), "vocab/unk_rate": unk / max(total, 1)}
    tracker.log_metrics(metrics, step=0)
    # The normalisation every later stage applies (the tokenizer stores it too): recorded beside the model.
    normalisation = {"lowercase": v.lowercase, "keep_accents": v.keep_accents, **(imported or {})}
    if imported is None:
        normalisation["spm_normalizer"] = "nmt_nfkc"  # SentencePiece's default, used when training here
    (tmp / "tokenizer" / "normalization.json").write_text(json.dumps(normalisation, indent=1) + "\n")
    tracker.set_tags({f"vocab.{key}": val for key, val in normalisation.items() if key != "source"})
    tracker.log_artifacts(tmp / "tokenizer", "tokenizer")
    return {
        "tokenizer_dir": str(ctx.done / "tokenizer"),
        "spm_model": str(ctx.done / "spiece.model"),
        "vocab_size": len(tok),
        "unk_rate": metrics["vocab/unk_rate"],
        "normalization": normalisation,
    }


STAGE = Stage(
    name="vocab",
    section="vocab",
    compute=compute,
    inputs=inputs,
    needs=lambda cfg: ("corpus",) if not cfg.vocab.from_spm else (),
    prepare=prepare,
    describe=_label,
)
