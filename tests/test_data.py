"""Bad labelled CSVs give one clear error naming file and row; missing phrases are dropped or fatal."""

from __future__ import annotations

import pytest

from albert_exp.data import encode, read_labelled_csv
from albert_exp.errors import UserError


def _csv(tmp_path, content: bytes | str, name="d.csv"):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "the file is empty"),
        ("review,phrase\nnice,\n", "missing column 'text'"),
        ("text,phrase\n", "header but no rows"),
        ('text,phrase\n"",x\n', "row 2: empty text"),
        (b"text,phrase\ngood,\ncaf\xe9 latte,latte\n", "d.csv:3: bytes that are not UTF-8"),
    ],
)
def test_bad_csvs(tmp_path, content, message):
    with pytest.raises(UserError) as err:
        read_labelled_csv(_csv(tmp_path, content))
    assert message in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        read_labelled_csv(tmp_path / "nope.csv")


def test_phrases_split_and_missing_phrase_policy(tmp_path, tiny_tokenizer):
    p = _csv(
        tmp_path,
        "text,phrase\nThe lamb curry and the duck soup.,lamb curry|duck soup\nNice place.,\nGreat tacos.,burrito\n",
    )
    rows, digest = read_labelled_csv(p)
    assert rows[0][2] == ["lamb curry", "duck soup"] and rows[1][2] == [] and len(digest) == 64
    enc = encode(p, tiny_tokenizer, max_seq_length=32)
    assert len(enc) == 2 and enc.dropped[0]["row"] == 4 and enc.dropped[0]["missing"] == ["burrito"]
    assert sum(y == 1 for y in enc.labels[0]) >= 4 and all(y != 1 for y in enc.labels[1])
    with pytest.raises(UserError, match=r"d.csv:row 4: phrase 'burrito' does not occur"):
        encode(p, tiny_tokenizer, max_seq_length=32, on_missing_phrase="error")


def test_phrase_longer_than_max_seq_length(tmp_path, tiny_tokenizer):
    long = " ".join(["spicy lamb dumplings"] * 10)
    p = _csv(tmp_path, f"text,phrase\n{long} here,{long}\n")
    with pytest.raises(UserError, match=r"row 2: phrase .* more than max_seq_length - 2 = 14"):
        encode(p, tiny_tokenizer, max_seq_length=16)


def test_mention_replacement_keeps_contexts_and_labels(tmp_path, tiny_tokenizer):
    from albert_exp.augment import augment

    rows = [
        (2, "We loved the Spicy Lamb Dumplings and the duck soup!", [(13, 33), (42, 51)], ["x", "y"]),
        (3, "Service was slow.", [], []),
    ]
    out = augment(rows, 3, seed=1)
    assert len(out) == 3  # copies of the row with mentions only
    for _, text, spans, phrases in out:
        assert [text[s:e] for s, e in spans] == phrases
        assert text.startswith("We loved the ") and " and the " in text and text.endswith("!")
        assert phrases[0].istitle() and phrases[1].islower()
    assert len({t for _, t, _, _ in out}) == 3 and augment(rows, 0, seed=1) == []
    p = _csv(tmp_path, "text,phrase\nWe loved the lamb curry.,lamb curry\nNice place.,\n")
    enc = encode(p, tiny_tokenizer, max_seq_length=32, augment_copies=2, seed=0)
    assert len(enc.texts) == 4 and enc.texts[:2] == ["We loved the lamb curry.", "Nice place."]
    assert all(sum(y == 1 for y in labels) >= 1 for labels in (enc.token_labels[0], *enc.token_labels[2:]))
