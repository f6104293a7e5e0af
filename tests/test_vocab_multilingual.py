"""Vocabulary robustness: CJK, Cyrillic, Thai and accented Latin text; one normalisation everywhere (the
sample SentencePiece trains on, the HF tokenizer, and the pretraining-data tokenizer give the same result)."""

from __future__ import annotations

import random
import unicodedata
from pathlib import Path

import pytest

from albert_exp.errors import UserError
from albert_exp.vocab import SPECIALS, build_hf_tokenizer, check_accent_policy, normalize, train_sentencepiece

WORDS = {
    "ru": "мы любим этот ресторан очень вкусно сегодня курица рис суп Москва Ёлка".split(),
    "zh": "我们 喜欢 这家 餐厅 的 鸡肉 米饭 很 好吃 今天 北京 饺子".split(),
    "th": "สวัสดี ขอบคุณ อาหาร อร่อย มาก ร้าน ไก่ ข้าว น้ำ กิน ที่นี่ ผัดไทย".split(),
    "la": "café crème brûlée très délicieux naïve über Straße piñata señor São Paulo Đà Nẵng phở".split(),
}


def _sentence(rng: random.Random, lang: str) -> str:
    sep = "" if lang in ("zh", "th") else " "  # Chinese and Thai are written without spaces
    return sep.join(rng.choice(WORDS[lang]) for _ in range(rng.randint(3, 8))) + ("。" if lang == "zh" else ".")


def _vocab(root: Path, keep_accents: bool, langs=tuple(WORDS)) -> Path:
    rng = random.Random(0)
    lines = [_sentence(rng, lang) for _ in range(500) for lang in langs]
    train_sentencepiece(
        [normalize(s, lowercase=True, keep_accents=keep_accents) for s in lines], root / "spiece", 300, "unigram", 1.0
    )
    build_hf_tokenizer(root / "spiece.model", root / "tokenizer", lowercase=True, keep_accents=keep_accents)
    return root / "tokenizer"


@pytest.fixture(scope="module")
def kept(tmp_path_factory) -> Path:
    return _vocab(tmp_path_factory.mktemp("kept"), keep_accents=True)


@pytest.mark.parametrize("lang", list(WORDS))
def test_every_script_round_trips_without_unknowns(kept, lang):
    from transformers import AlbertTokenizer

    from albert_exp.pretraining_data.shards import Tokenizer

    tok = AlbertTokenizer.from_pretrained(str(kept))
    assert tok.convert_ids_to_tokens(list(range(5))) == SPECIALS
    ours = Tokenizer(kept, lowercase=True, keep_accents=True)
    rng = random.Random(42)  # sentences never seen in training
    for _ in range(20):
        s = _sentence(rng, lang)
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        # Nothing lost (Thai vowels and tones, accents, Ё) beyond SentencePiece's NFKC (Thai ำ -> ํา).
        assert tok.decode(ids) == unicodedata.normalize("NFKC", s.lower())
        assert ours.encode_lines([s])[0].tolist() == ids  # pretraining data tokenises like fine-tuning


def test_normalisation_matches_the_hf_tokenizer_for_every_script(kept, tmp_path):
    from transformers import AlbertTokenizer

    from albert_exp.pretraining_data.shards import Tokenizer

    stripped_dir = _vocab(tmp_path, keep_accents=False, langs=("la", "ru"))
    stripped = AlbertTokenizer.from_pretrained(str(stripped_dir))
    ours = Tokenizer(stripped_dir, lowercase=True, keep_accents=False)
    rng = random.Random(3)
    for s in [_sentence(rng, lang) for lang in ("la", "ru") for _ in range(10)]:
        assert ours.encode_lines([s])[0].tolist() == stripped(s, add_special_tokens=False)["input_ids"]
    kept_tok = AlbertTokenizer.from_pretrained(str(kept))
    samples = ["Crème BRÛLÉE ``quoted''", "Ёлка и йогурт", "ไก่กินที่นี่", "中文，全角ＡＢＣ", "नमस्ते दुनिया", "Ελληνικά"]
    nfkc = lambda t: unicodedata.normalize("NFKC", t)  # noqa: E731 - SentencePiece's own step, on both sides
    for s in samples:
        for tok, keep in ((stripped, False), (kept_tok, True)):
            hf = tok.backend_tokenizer.normalizer.normalize_str(s)
            assert nfkc(hf) == nfkc(normalize(s, lowercase=True, keep_accents=keep)), s
    assert normalize("Crème Ёлка", lowercase=True, keep_accents=False) == "creme елка"


def test_stripping_accents_is_refused_where_marks_are_vowels_and_tones():
    rng = random.Random(1)
    thai = [_sentence(rng, "th") for _ in range(50)]
    latin = [_sentence(rng, "la") for _ in range(50)] + [_sentence(rng, "ru") for _ in range(50)]
    with pytest.raises(UserError, match="THAI"):
        check_accent_policy(thai + latin, keep_accents=False, where="vocab.keep_accents")
    check_accent_policy(thai + latin, keep_accents=True, where="vocab.keep_accents")
    check_accent_policy(latin, keep_accents=False, where="vocab.keep_accents")  # é -> e is fine


def test_rebuilding_the_tokenizer_dir_follows_the_new_model(tmp_path):
    import sentencepiece as spm
    from transformers import AlbertTokenizer

    s = "我们喜欢这家餐厅。"
    first = _vocab(tmp_path, keep_accents=True, langs=("la",))
    old = AlbertTokenizer.from_pretrained(str(first))
    assert old.unk_token_id in old(s, add_special_tokens=False)["input_ids"]  # Latin-only: no CJK pieces
    second = _vocab(tmp_path, keep_accents=True, langs=("zh", "th"))  # same directory, other vocabulary
    tok = AlbertTokenizer.from_pretrained(str(second))
    ids = tok(s, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and tok.decode(ids) == s
    # The tokenizer (also its tokenizer.json) is the new SentencePiece model's, piece for piece.
    new = spm.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model"))
    assert ids == new.encode(s) and len(tok) == new.get_piece_size()


def test_the_mark_table_covers_every_combining_mark_in_unicode():
    from albert_exp.vocab import _marks

    every = {cp for cp in range(0x110000) if unicodedata.category(chr(cp)).startswith("M")}
    assert set(_marks()) == every


def test_emoji_variation_selectors_and_zwj_sequences_are_not_accents():
    emoji = ["I ❤️ this place 👍🏽", "family 👨‍👩‍👧 table, 1️⃣ pizza ☕️", "best ramen ever 🍜🍜 ✌️"] * 50
    check_accent_policy(emoji, keep_accents=False, where="vocab.keep_accents")  # nothing to refuse
    thai = [_sentence(random.Random(i), "th") for i in range(50)]
    with pytest.raises(UserError, match="THAI"):  # real vowel marks still count, emoji or not
        check_accent_policy(emoji[:50] + thai, keep_accents=False, where="vocab.keep_accents")


def test_vocab_from_an_existing_sentencepiece_model(tmp_path, mlflow_store):
    import json

    from albert_exp.config import load_config
    from tests.conftest import stage_runner

    run = stage_runner("vocab")

    _vocab(tmp_path / "given", keep_accents=False, langs=("la", "ru"))
    given = tmp_path / "given" / "spiece.model"
    cfg = load_config(None, [f"workdir={tmp_path / 'w'}", f"vocab.from_spm={given}", "vocab.lowercase=true"])
    res = run(cfg)  # no corpus needed
    out = Path(res["tokenizer_dir"])
    assert (out / "spiece.model").read_bytes() == given.read_bytes()
    norm = json.loads((out / "normalization.json").read_text())
    assert norm["lowercase"] is True and norm["keep_accents"] is False and norm["spm_normalizer"] == "nmt_nfkc"
    assert res["normalization"]["source"] == str(given) and norm["model_type"] == "unigram"
    # the tokenizer directory the other stages use, with the recorded normalisation applied
    import sentencepiece as spm
    from transformers import AlbertTokenizer

    from albert_exp.pretraining_data.shards import Tokenizer

    tok = AlbertTokenizer.from_pretrained(str(out))
    s = "Café CRÈME brûlée, Москва"
    sp = spm.SentencePieceProcessor(model_file=str(given))
    assert tok(s, add_special_tokens=False)["input_ids"] == sp.encode(normalize(s, lowercase=True, keep_accents=False))
    ids, _ = Tokenizer(out, lowercase=True, keep_accents=False).encode_lines([s])
    assert list(ids) == tok(s, add_special_tokens=False)["input_ids"]
