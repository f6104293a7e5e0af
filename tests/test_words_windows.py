"""Whole-word spans (token -> word aggregation), overlapping windows, and span metrics, on hand-made cases."""

from __future__ import annotations

import types

import pytest
import torch

from albert_exp.metrics import phrase_words, span_metrics
from albert_exp.windows import merge, tag_texts, window_bounds
from albert_exp.words import extract_spans, tags_to_spans, word_scores, word_spans


def test_words_split_punctuation_emoji_and_cjk_characters():
    text = "Chef's lamb-curry, 😍 我喜欢 x"
    words = [text[s:e] for s, e in word_spans(text)]
    assert words == ["Chef", "'", "s", "lamb", "-", "curry", ",", "😍", "我", "喜", "欢", "x"]


@pytest.mark.parametrize("strategy, expected", [("first", [0.9, 0.1]), ("average", [0.5, 0.1]), ("max", [0.9, 0.1])])
def test_aggregation_strategies_over_subwords(strategy, expected):
    text = "dumplings here"
    offsets = [(0, 4), (4, 7), (7, 9), (10, 14)]  # ▁dump lin gs ▁here
    scores = [0.9, 0.1, 0.5, 0.1]
    assert word_scores(word_spans(text), offsets, scores, strategy) == pytest.approx(expected)


def test_a_span_never_starts_or_ends_inside_a_word():
    text = "the spicy lamb dumplings were great"
    # ▁the ▁spic y ▁lamb ▁dump lings ▁were ▁great: the tagger is unsure about "y" and "lings"
    offsets = [(0, 3), (4, 8), (8, 9), (10, 14), (15, 19), (19, 24), (25, 29), (30, 35)]
    scores = [0.0, 0.9, 0.3, 0.95, 0.8, 0.4, 0.1, 0.0]
    # token runs would give "spic" and "lamb dump"; words give the whole dish
    _, probs, spans = extract_spans(text, offsets, scores, strategy="first")
    assert [text[s:e] for s, e in spans] == ["spicy lamb dumplings"]
    _, _, spans = extract_spans(text, offsets, scores, strategy="average")
    assert [text[s:e] for s, e in spans] == ["spicy lamb dumplings"]  # (0.9+0.3)/2 and (0.8+0.4)/2 >= 0.5


def test_adjacent_dishes_stay_apart_at_punctuation_and_untagged_words():
    text = "lamb curry, duck soup and pho"
    words = word_spans(text)
    tags = [1, 1, 0, 1, 1, 0, 1]  # lamb curry , duck soup and pho
    assert [text[s:e] for s, e in tags_to_spans(text, words, tags)] == ["lamb curry", "duck soup", "pho"]
    # punctuation inside a dish name is kept when it is tagged
    text = "chef's pie!"
    assert [text[s:e] for s, e in tags_to_spans(text, word_spans(text), [1, 1, 1, 1, 0])] == ["chef's pie"]


def test_cjk_and_thai_keep_character_level_spans():
    text = "我喜欢宫保鸡丁和米饭"
    offsets = [(i, i + 1) for i in range(len(text))]
    scores = [1.0 if 3 <= i < 7 else 0.0 for i in range(len(text))]
    assert extract_spans(text, offsets, scores)[2] == [(3, 7)]
    text = "ผัดไทยอร่อย"  # Thai: no spaces; every character is a word, so a span may end mid-"word"
    offsets = [(0, 6), (6, 11)]
    assert extract_spans(text, offsets, [0.9, 0.1])[2] == [(0, 6)]


def test_window_bounds_cover_everything_with_the_stride_as_overlap():
    assert window_bounds(5, 10, 3) == [(0, 5)]
    bounds = window_bounds(25, 10, 4)
    assert bounds == [(0, 10), (6, 16), (12, 22), (15, 25)]
    assert set().union(*(range(a, b) for a, b in bounds)) == set(range(25))
    with pytest.raises(ValueError):
        window_bounds(25, 10, 10)


def test_merge_takes_each_token_from_the_window_where_it_has_most_context():
    bounds = [(0, 4), (2, 6)]
    merged = merge(6, bounds, [[0.0, 0.1, 0.2, 0.3], [1.2, 1.3, 1.4, 1.5]])
    # token 2: context 1 in window 1 (min(2, 1)), 0 in window 2 -> window 1; token 3: 0 vs 1 -> window 2
    assert merged == [0.0, 0.1, 0.2, 1.3, 1.4, 1.5]


class LookupTagger(torch.nn.Module):
    """A stand-in for a trained tagger: tags every token whose id is in `ids` (whatever the window)."""

    def __init__(self, ids: set[int], vocab: int):
        super().__init__()
        self.table = torch.zeros(vocab, 2)
        self.table[:, 0] = 5.0
        for i in ids:
            self.table[i] = torch.tensor([0.0, 5.0])

    def forward(self, input_ids, attention_mask=None):
        return types.SimpleNamespace(logits=self.table[input_ids])


def _dish_tagger(tokenizer, dish: str) -> LookupTagger:
    ids = set(tokenizer(dish, add_special_tokens=False)["input_ids"])
    return LookupTagger(ids, len(tokenizer))


def test_a_mention_across_a_window_border_is_found_once(tiny_tokenizer):
    dish = "spicy lamb dumplings"
    filler = "the waiter was lovely and "
    model = _dish_tagger(tiny_tokenizer, dish)
    n_filler = len(tiny_tokenizer(filler * 3, add_special_tokens=False)["input_ids"])
    text = filler * 3 + dish + " were great."
    [tagged] = tag_texts([text], model, tiny_tokenizer, max_seq_length=n_filler + 4, stride=3)
    assert tagged["windows"] >= 2  # the dish straddles the first window's end
    spans = extract_spans(text, tagged["offsets"], tagged["scores"])[2]
    assert [text[s:e] for s, e in spans] == [dish]


def test_a_20000_character_review_is_tagged_to_the_end(tiny_tokenizer):
    from albert_exp.serving import extract

    dish = "spicy lamb dumplings"
    unit = f"the waiter was lovely and the {dish} were great. "
    text = unit * (20000 // len(unit) + 1)
    assert len(text) >= 20000
    [row] = extract([text], _dish_tagger(tiny_tokenizer, dish), tiny_tokenizer, max_seq_length=64, stride=16)
    assert row["phrases"] == [dish] * text.count(dish)
    assert row["spans"][-1]["end"] > len(text) - len(unit)
    assert len(row["tokens"]) == len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"])


def test_evaluation_counts_every_gold_mention_of_long_texts(tmp_path, tiny_tokenizer):
    from albert_exp.corpus_files import write_labelled_csv
    from albert_exp.data import encode
    from albert_exp.windows import evaluate

    dish = "spicy lamb dumplings"
    long = " ".join(["we loved the spicy lamb dumplings and the service."] * 12)
    rows = [(long, [dish]), ("the waiter was lovely.", []), (f"I ordered the {dish}.", [dish])]
    write_labelled_csv(tmp_path / "t.csv", rows)
    data = encode(tmp_path / "t.csv", tiny_tokenizer, max_seq_length=24, stride=6, train_words=set())
    assert data.windowed_rows == 1 and len(data) > 3
    metrics, spans = evaluate(_dish_tagger(tiny_tokenizer, dish), data, 8, tiny_tokenizer.pad_token_id)
    assert len(spans[0]) == 12  # every mention, also those past the first window
    assert metrics["phrase_f1"] == 1.0 and metrics["phrase_recall"] == 1.0
    assert metrics["unseen_mentions"] == 13 and metrics["unseen_phrase_recall"] == 1.0
    assert metrics["token_accuracy"] > metrics["all_negative_token_accuracy"]


def test_span_metrics_hand_computed_with_the_seen_unseen_split():
    texts = ["the lamb curry and the zokaretti", "service was fine", "ramen al dente tbh"]
    gold = [[(4, 14), (23, 32)], [], [(0, 14)]]
    pred = [[(4, 14), (19, 32)], [(0, 7)], [(0, 5)]]
    train = phrase_words(["Lamb curry", "ramen bowl"])
    m = span_metrics(texts, gold, pred, train)
    # gold: lamb curry (seen, found), zokaretti (unseen, boundary wrong), ramen al dente (unseen: al, dente)
    assert m["phrase_precision"] == pytest.approx(1 / 4) and m["phrase_recall"] == pytest.approx(1 / 3)
    assert m["overlap_recall"] == pytest.approx(1.0)
    assert m["negative_fp_rate"] == 1.0
    assert m["seen_phrase_recall"] == 1.0 and m["unseen_phrase_recall"] == 0.0
    assert m["unseen_mentions"] == 2 and m["unseen_phrase_precision"] == pytest.approx(1 / 3)
    # words: 6 + 3 + 4 = 13; wrong: the second "the" (1), "service" (1), "al" and "dente" missed (2)
    assert m["word_accuracy"] == pytest.approx(9 / 13)
    assert "unseen_phrase_recall" not in span_metrics(texts, gold, pred)
    # every gold word seen in training (the "parts" toy): no unseen figure rather than a 0 that reads as failure
    all_seen = span_metrics(texts, gold, pred, phrase_words(["lamb curry", "zokaretti", "ramen al dente"]))
    assert all_seen["unseen_mentions"] == 0 and "unseen_phrase_recall" not in all_seen
    assert all_seen["seen_phrase_recall"] == pytest.approx(1 / 3)
