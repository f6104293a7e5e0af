"""The realistic toy: unseen dish words in test by construction, and an unlabelled corpus that helps without
leaking the test split."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from albert_exp import toy_real
from albert_exp.labels import phrase_spans
from albert_exp.metrics import phrase_words


def test_word_pools_are_disjoint_between_splits():
    pools = toy_real.word_pools(3)
    owner: dict[str, str] = {}
    for split, cuisines in pools.items():
        for words in cuisines.values():
            for w in words:
                assert owner.setdefault(w, split) == split, f"{w} in {owner[w]} and {split}"
    assert all(len(pools[s]) == len(toy_real.CUISINES) for s in toy_real.SPLITS)


def test_test_dishes_have_words_never_seen_in_training_and_labels_match_the_text():
    train = list(toy_real.labelled_rows(3, "train", 400, 0.5, 3))
    test = list(toy_real.labelled_rows(3, "test", 200, 0.5, 3))
    known = phrase_words([p for r in train for p in r.phrases])
    mentions = [p for r in test for p in r.phrases]
    unseen = [p for p in mentions if toy_real.unseen_words(p, known)]
    assert 0.5 < len(unseen) / len(mentions) < 0.95  # mostly unseen, with a seen share to compare against
    assert sum(1 for r in test if not r.phrases) > 50  # negatives
    for r in train + test:  # every label occurs in its text at word boundaries
        assert phrase_spans(r.text, r.phrases)[1] == []
    texts = " ".join(r.text for r in train)
    assert any(f in texts for f in toy_real.DISTRACTOR_FOODS)  # foods and drinks that are never tagged
    assert not known & {w for f in toy_real.DISTRACTOR_FOODS for w in f.split()}


def test_the_unlabelled_stream_skips_excluded_reviews():
    first = [t for t, _ in zip(toy_real.unlabelled_reviews(3), range(50), strict=False)]
    excluded = set(first[10:20])
    again = [t for t, _ in zip(toy_real.unlabelled_reviews(3, excluded), range(60), strict=False)]
    assert not excluded & set(again) and again[:10] == first[:10]


def test_corpus_stage_writes_the_realistic_toy(tmp_path):
    """`albert-exp corpus --toy` in realistic mode, as a user runs it: the unlabelled corpus mentions dishes
    that no labelled split has, and holds no labelled test review."""
    env_cmd = [sys.executable, "-m", "albert_exp", "corpus", "--toy", "--workdir", str(tmp_path / "w")]
    sizes = "corpus.toy_mode=realistic corpus.toy_documents=400 corpus.toy_train_rows=300"
    sizes += " corpus.toy_val_rows=50 corpus.toy_test_rows=100"
    out = subprocess.run(
        [*env_cmd, "--set", sizes], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    corpus = tmp_path / "w" / "corpus"
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["documents"] == 400 and manifest["toy_mode"] == "realistic"
    lines = (corpus / manifest["shards"][0]["path"]).read_text().split("\n")
    labelled = {}
    for split in ("train", "val", "test"):
        with open(corpus / f"{split}.csv", newline="") as fh:
            labelled[split] = list(csv.DictReader(fh))
    labelled_words = phrase_words([p for rows in labelled.values() for r in rows for p in r["phrase"].split("|")])
    corpus_words = set(" ".join(lines).lower().split())
    only_unlabelled = {w for ws in toy_real.word_pools(42)["unlabelled"].values() for w in ws}
    assert len(corpus_words & only_unlabelled) > 20 and not labelled_words & only_unlabelled
    joined = " ".join(lines)  # sentences of a review joined back as they were written
    for r in labelled["test"]:
        if r["phrase"]:  # a review with a dish is specific enough to be a copy if it appeared
            assert r["text"] not in joined
