"""Labelling from character spans and the metrics, on hand-computed cases."""

from __future__ import annotations

import pytest

from albert_exp.labels import IGNORE, find_spans, phrase_spans, tags_to_spans, token_labels
from albert_exp.metrics import token_metrics, token_runs


def test_every_occurrence_case_insensitive_and_at_word_boundaries():
    text = "Lamb curry, then more LAMB CURRY; no lamb currywurst."
    assert find_spans(text, "lamb curry") == [(0, 10), (22, 32)]
    assert find_spans(text, "lamb curry", case_insensitive=False) == []
    assert find_spans(text, "LAMB CURRY", case_insensitive=False) == [(22, 32)]


def test_no_word_boundaries_in_scripts_without_spaces():
    assert find_spans("我喜欢宫保鸡丁和米饭", "宫保鸡丁") == [(3, 7)]
    assert find_spans("ผัดไทยอร่อยมาก", "ผัดไทย") == [(0, 6)]


def test_overlapping_and_adjacent_phrases_merge_into_one_span():
    spans, missing = phrase_spans("the spicy lamb curry was good", ["spicy lamb", "lamb curry"])
    assert spans == [(4, 20)] and missing == []
    spans, _ = phrase_spans("ab cd", ["ab", "cd"])  # separated by a space: two spans
    assert spans == [(0, 2), (3, 5)]
    assert phrase_spans("nothing here", ["lamb"]) == ([], ["lamb"])


def test_token_labels_follow_offsets_subwords_and_specials():
    # [CLS] ▁the ▁spic y ▁lamb ! [SEP] <pad>
    offsets = [(0, 0), (0, 3), (4, 8), (8, 9), (10, 14), (14, 15), (0, 0), (0, 0)]
    special = [1, 0, 0, 0, 0, 0, 1, 1]
    assert token_labels(offsets, special, [(4, 14)]) == [IGNORE, 0, 1, 1, 1, 0, IGNORE, IGNORE]
    # a phrase starting inside a subword still tags that subword
    assert token_labels(offsets, special, [(6, 9)]) == [IGNORE, 0, 1, 1, 0, 0, IGNORE, IGNORE]


def test_truncation_keeps_the_visible_part_of_a_phrase():
    offsets = [(0, 0), (0, 3), (4, 8), (0, 0)]  # text continues beyond char 8 but was truncated
    assert token_labels(offsets, [1, 0, 0, 1], [(4, 20)]) == [IGNORE, 0, 1, IGNORE]


def test_labels_with_a_real_tokenizer(tiny_tokenizer):
    text = "We shared the Spicy Lamb Dumplings and the spicy lamb dumplings again."
    spans, _ = phrase_spans(text, ["spicy lamb dumplings"])
    enc = tiny_tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    labels = token_labels(enc["offset_mapping"], enc["special_tokens_mask"], spans)
    tagged = [(s, e) for (s, e), y in zip(enc["offset_mapping"], labels, strict=True) if y == 1]
    assert tags_to_spans(enc["offset_mapping"], [max(y, 0) for y in labels]) == spans
    assert all(any(ps <= s and e <= pe for ps, pe in spans) for s, e in tagged)
    enc = tiny_tokenizer(
        text, return_offsets_mapping=True, return_special_tokens_mask=True, truncation=True, max_length=8
    )
    labels = token_labels(enc["offset_mapping"], enc["special_tokens_mask"], spans)
    assert len(labels) == 8 and labels[0] == IGNORE and labels[-1] == IGNORE and 1 in labels


def test_tags_to_spans_merges_runs_and_skips_specials():
    offsets = [(0, 0), (0, 3), (4, 8), (8, 9), (10, 14), (0, 0)]
    assert tags_to_spans(offsets, [0, 1, 1, 0, 1, 0]) == [(0, 8), (10, 14)]
    assert tags_to_spans(offsets, [0, 0, 1, 1, 1, 0]) == [(4, 14)]


def test_token_runs():
    assert token_runs([1, 1, 0, 1], [True] * 4) == {(0, 1), (3, 3)}
    assert token_runs([1, 1, 1], [True, False, True]) == {(0, 0), (2, 2)}


def test_token_metrics_hand_computed():
    labels = [
        [IGNORE, 0, 1, 1, 0, IGNORE],  # gold phrase at tokens 2-3
        [IGNORE, 0, 0, 0, IGNORE],  # a negative
        [IGNORE, 1, 0, 1, IGNORE],
    ]  # two gold phrases
    preds = [
        [1, 0, 1, 1, 0, 1],  # exact match (ignored positions do not count)
        [0, 0, 1, 0, 0],  # false positive on a negative
        [0, 1, 1, 0, 0],
    ]  # one wrong span (1-2), one missed (3)
    m = token_metrics(labels, preds)
    # real tokens: 4 + 3 + 3 = 10; correct: 4 + 2 + 1 = 7
    assert m["token_accuracy"] == pytest.approx(0.7)
    assert m["all_negative_token_accuracy"] == pytest.approx(6 / 10)
    # predicted runs: (2,3), (2,2), (1,2) -> 3; gold runs: (2,3), (1,1), (3,3) -> 3; exact matches: 1
    assert m["phrase_precision"] == pytest.approx(1 / 3)
    assert m["phrase_recall"] == pytest.approx(1 / 3)
    assert m["phrase_f1"] == pytest.approx(1 / 3)
    assert m["negative_fp_rate"] == pytest.approx(1.0)


def test_token_metrics_perfect_and_empty_predictions():
    labels = [[IGNORE, 0, 1, IGNORE], [IGNORE, 0, IGNORE]]
    assert token_metrics(labels, [[0, 0, 1, 0], [0, 0, 0]])["phrase_f1"] == 1.0
    m = token_metrics(labels, [[0, 0, 0, 0], [0, 0, 0]])
    assert m["phrase_f1"] == 0.0 and m["negative_fp_rate"] == 0.0 and m["token_accuracy"] == pytest.approx(2 / 3)
