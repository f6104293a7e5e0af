"""The `baseline` stage (a linear-chain CRF on words), run as a user runs it, and its pyfunc."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys

import pytest

from albert_exp.crf import bio, bio_to_spans
from albert_exp.words import word_spans


def test_bio_keeps_adjacent_dishes_apart():
    text = "tacos de birria pad thai and flan"
    words = word_spans(text)
    spans = [(0, 15), (16, 24), (29, 33)]
    tags = bio(words, spans)
    assert tags == ["B", "I", "I", "B", "I", "O", "B"]
    assert bio_to_spans(text, words, tags) == spans
    assert bio_to_spans(text, words, ["O", "I", "I", "O", "O", "O", "O"]) == [(6, 15)]  # I after O starts a span


# A small Chinese review toy: dish = cooking method + main ingredient (+ a form); a test dish has a method or a
# main that no training dish has, and foods that are not dishes (rice, cola, tea) are never tagged.
ZH_METHODS = (
    "红烧 清蒸 糖醋 麻辣 香煎 干煸 宫保 鱼香 酸菜 水煮 椒盐 爆炒 白切 黄焖 葱油 蒜蓉 孜然 酱爆 回锅 剁椒 干锅".split()
)
ZH_MAINS = "牛肉 羊肉 鸡丁 鸭 鱼片 虾仁 排骨 豆腐 茄子 土豆 蘑菇 肥肠 鸡翅 牛腩 猪蹄 螃蟹 鲈鱼 花菜 藕片 腰花".split()
ZH_FORMS = ("", "", "", "饭", "面", "煲", "汤")
ZH_ONE = (
    "我们点了{}，味道很好。",
    "{}太咸了，不推荐。",
    "老板推荐的{}真的好吃！",
    "今天的{}有点凉。",
    "朋友说这里的{}是招牌。",
    "又来吃{}了，还是那么香。",
    "{}分量很足，价格也不贵。",
    "强烈推荐{}！",
)
ZH_TWO = ("还点了{}和{}，都不错。", "{}比{}好吃多了。", "先上了{}，然后是{}。")
ZH_OTHER = ("米饭", "可乐", "啤酒", "绿茶", "咖啡", "面包", "小菜")
ZH_NEG = ("服务员很热情，环境也不错。", "等了半个小时才上菜。", "下次还会再来。", "停车不太方便。")


def chinese_reviews(n: int, split: str, seed: int) -> list[tuple[str, list[str]]]:
    """(text, dishes) rows; "train" dishes combine the first two thirds of methods and mains, those of any other
    split have a method or a main (or both) from the last third: unseen in training."""
    rng = random.Random(seed)
    cut_m, cut_i = len(ZH_METHODS) * 2 // 3, len(ZH_MAINS) * 2 // 3

    def dish() -> str:
        m, i = rng.choice(ZH_METHODS[:cut_m]), rng.choice(ZH_MAINS[:cut_i])
        if split != "train":
            new_m, new_i = rng.choice(ZH_METHODS[cut_m:]), rng.choice(ZH_MAINS[cut_i:])
            m, i = rng.choice([(new_m, i), (m, new_i), (new_m, new_i)])
        return m + i + rng.choice(ZH_FORMS)

    rows = []
    for _ in range(n):
        r = rng.random()
        if r < 0.2:
            rows.append((rng.choice(ZH_NEG) + rng.choice(ZH_ONE).format(rng.choice(ZH_OTHER)), []))
        elif r < 0.7:
            d = dish()
            rows.append((rng.choice(ZH_ONE).format(d), [d]))
        else:
            a, b = dish(), (dish() if rng.random() < 0.7 else rng.choice(ZH_OTHER))
            rows.append((rng.choice(ZH_TWO).format(a, b), [a] + ([b] if b not in ZH_OTHER else [])))
    return rows


def whitespace_items(text: str) -> list[tuple[int, int]]:
    """Words as a whitespace tokenizer cuts them (punctuation apart): a Chinese clause is one item."""
    return [m.span() for m in re.finditer(r"\w+|[^\w\s]", text)]


def test_features_classic_set_and_characters_of_scripts_without_spaces():
    from albert_exp.crf import features

    text = "Pad Thai 和宫保鸡丁"
    f = features(text, word_spans(text))
    pad, thai, gong = f[0], f[1], f[3]
    assert pad["w"] == "pad" and pad["shape"] == "Xxx" and pad["title"] and pad["0|1"] == "pad|thai"
    assert thai["s2"] == "ai" and thai["p3"] == "tha" and thai["-1:w"] == "pad" and thai["2:char"]
    # a character: its own form, four characters either side (words too), character bigrams; no affixes
    assert gong["w"] == "宫" and "s2" not in gong and gong["-1|0"] == "和|宫" and gong["0|1"] == "宫|保"
    assert gong["-3:w"] == "pad" and gong["4:edge"] and gong["3:w"] == "丁"


def test_chinese_characters_as_items_beat_whitespace_words(tmp_path):
    """On a Chinese toy whose test dishes have unseen characters, character items tag most dishes; whitespace
    words (a clause per item) can tag none. Transitions training never shows get weights too."""
    import pycrfsuite

    from albert_exp.crf import tag, train
    from albert_exp.labels import phrase_spans
    from albert_exp.metrics import span_metrics

    def spans(rows):
        return [t for t, _ in rows], [phrase_spans(t, ps)[0] for t, ps in rows]

    train_texts, train_gold = spans(chinese_reviews(400, "train", 1))
    texts, gold = spans(chinese_reviews(200, "test", 3))
    f1 = {}
    for name, items in (("chars", word_spans), ("whitespace", whitespace_items)):
        path = str(tmp_path / f"{name}.crfsuite")
        train(train_texts, train_gold, path, 0.0, 0.01, 100, items=items)
        tagger = pycrfsuite.Tagger()
        tagger.open(path)
        pred = [[(s["start"], s["end"]) for s in row["spans"]] for row in tag(tagger, texts, items=items)]
        f1[name] = span_metrics(texts, gold, pred)["phrase_f1"]
        if name == "chars":
            assert ("O", "I") in tagger.info().transitions  # never in BIO training data
    assert f1["chars"] > 0.8 and f1["whitespace"] < 0.1, f1  # measured: 0.91 and 0.0


def test_one_trainer_fits_every_grid_point_as_a_fresh_one(tmp_path):
    from albert_exp.crf import fit, train, trainer
    from albert_exp.labels import phrase_spans

    rows = chinese_reviews(100, "train", 1)
    texts, gold = [t for t, _ in rows], [phrase_spans(t, ps)[0] for t, ps in rows]
    data = trainer(texts, gold)
    fit(data, str(tmp_path / "a"), 0.5, 0.1, 30)
    fit(data, str(tmp_path / "b"), 0.0, 0.01, 30)  # after another grid point
    train(texts, gold, str(tmp_path / "c"), 0.0, 0.01, 30)
    assert (tmp_path / "b").read_bytes() == (tmp_path / "c").read_bytes()


def test_lookup_baseline_finds_training_names_only():
    from albert_exp.baseline import lookup_spans

    texts = ["the Lamb Curry and the lamb currywurst", "pad thai, then pho"]
    assert lookup_spans(texts, ["lamb curry", "pho", "tacos"]) == [[(4, 14)], [(15, 18)]]


def test_baseline_stage_trains_scores_and_logs_a_pyfunc(tmp_path):
    """corpus (realistic toy) then baseline, each a CLI subprocess; then the logged pyfunc predicts."""
    import mlflow
    import pandas as pd

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": uri}
    sizes = "name=crf corpus.toy=true corpus.toy_mode=realistic corpus.toy_documents=20 corpus.toy_train_rows=300"
    sizes += " corpus.toy_val_rows=80 corpus.toy_test_rows=120 baseline.c1=[0.05] baseline.c2=[0.01,1.0]"

    def cli(stage: str, *extra: str, code: int = 0) -> str:
        cmd = [sys.executable, "-m", "albert_exp", stage, "--workdir", str(tmp_path / "w"), "--set", sizes, *extra]
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert out.returncode == code, out.stderr[-3000:]
        return out.stderr

    for stage in ("corpus", "baseline"):
        cli(stage)
    results = json.loads((tmp_path / "w" / "baseline" / "results.json").read_text())
    assert results["c1"] == 0.05 and results["c2"] in (0.01, 1.0)
    # far above tagging nothing, and the seen/unseen split is there
    assert results["test/phrase_f1"] > 0.5 and results["test/unseen_mentions"] > 20
    assert results["test/word_accuracy"] > results["test/all_negative_word_accuracy"]
    # the lookup finds seen names, not unseen ones (a few unseen ones may contain a seen name)
    assert results["test/lookup_seen_phrase_recall"] > 0.5 > results["test/lookup_unseen_phrase_recall"]
    client = mlflow.MlflowClient(uri)
    run = client.get_run(results["run_id"])
    assert run.data.tags["stage"] == "baseline" and run.data.metrics["test/phrase_f1"] == pytest.approx(
        results["test/phrase_f1"]
    )
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(results["model_uri"])
        text = "we shared the tacos de birria and the coffee was cold"
        pred = model.predict(pd.DataFrame({"text": [text, ""]}))
    finally:
        mlflow.set_tracking_uri(None)
    assert list(pred.columns) == ["phrases", "spans", "tokens"] and list(pred["phrases"][1]) == []
    for span in pred["spans"][0]:
        assert text[span["start"] : span["end"]] == span["text"]
    assert [t["token"] for t in pred["tokens"][0]] == [text[s:e] for s, e in word_spans(text)]
    # promote takes the CRF like any candidate, compared on phrase F1 (it has no token accuracy)
    promote = ["--run-id", results["run_id"], "--model-name", "crf-tagger"]
    assert "promote.metric" in cli("promote", *promote, "--metric", "token_accuracy", code=2)  # says what to use
    cli("promote", *promote, "--metric", "phrase_f1")
    version = client.get_model_version_by_alias("crf-tagger", "champion")
    assert version.run_id == results["run_id"]
