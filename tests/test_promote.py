"""`promote`: the rules (better, worse, equal, different data, forced), the lock, concurrent promotions, and the
champion served over HTTP on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tests.conftest import served_model, stage_runner, tracking_in
from tests.test_tune import TINY, make_data


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A module-wide SQLite MLflow store, a tiny dataset, and three finetune runs: good, its twin, and bad."""
    from albert_exp.config import load_config

    tmp = tmp_path_factory.mktemp("promote")
    with tracking_in(tmp) as uri:
        data = make_data(tmp / "data")
        runs = {}
        for key, lr, epochs in (("good", 1e-2, 3), ("twin", 1e-2, 3), ("bad", 1e-5, 1)):
            inputs = [f"finetune.{s}_csv={data / 'corpus' / f'{s}.csv'}" for s in ("train", "val", "test")]
            cfg = load_config(
                None,
                [
                    *TINY,
                    *inputs,
                    f"workdir={tmp / key}",
                    "name=promote-test",
                    f"finetune.learning_rate={lr}",
                    f"finetune.epochs={epochs}",
                    f"finetune.tokenizer_dir={data / 'vocab' / 'tokenizer'}",
                ],
            )
            runs[key] = stage_runner("finetune")(cfg)["run_id"]
        yield {"uri": uri, "tmp": tmp, "data": data, "runs": runs}


def _promote(store, model: str, run: str, *extra: str) -> dict:
    from albert_exp.config import load_config

    cfg = load_config(
        None,
        [
            *TINY,
            f"workdir={store['data']}",
            "name=promote-test",
            f"promote.model_name={model}",
            f"promote.run_id={store['runs'][run]}",
            *extra,
        ],
    )
    return stage_runner("promote")(cfg)


def test_decide():
    from albert_exp.promote import decide

    assert decide(0.9, None, 0.0, False)[0] is True
    assert decide(0.91, 0.90, 0.0, False)[0] is True
    assert decide(0.91, 0.90, 0.02, False)[0] is False  # not better by more than the margin
    assert decide(0.90, 0.90, 0.0, False) == (False, "equal: the champion stays")
    assert decide(0.80, 0.90, 0.0, False)[0] is False
    assert decide(0.80, 0.90, 0.0, True) == (True, "forced")


def test_promotion_rules_and_records(store):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    m = "rules"
    first = _promote(store, m, "bad")
    assert first["promoted"] and first["why"] == "no champion yet" and first["version"] == 1
    # registered by the logged model's own URI (a runs:/ URI makes MLflow 3 warn "no artifacts at artifact path")
    v1 = client.get_model_version(m, "1")
    assert v1.source.startswith("models:/m-") and v1.run_id == store["runs"]["bad"]
    good = _promote(store, m, "good")
    assert good["promoted"] and good["challenger_score"] > good["champion_score"] == first["challenger_score"]
    v2 = client.get_model_version(m, "2")
    assert v2.tags["promotion.champion_score_source"] == "recorded on the same data"
    assert v2.tags["eval_digest"] == first["eval_digest"] and "promoted" in v2.description
    assert client.get_model_version_by_alias(m, "champion").version == 2

    twin = _promote(store, m, "twin")  # same config and seed: the same score
    assert twin["challenger_score"] == good["challenger_score"]
    assert not twin["promoted"] and twin["why"] == "equal: the champion stays"
    assert client.get_model_version_by_alias(m, "challenger").version == 3
    assert client.get_model_version_by_alias(m, "champion").version == 2

    worse = _promote(store, m, "bad")  # v1 again: no new version, still worse
    assert not worse["promoted"] and worse["version"] == 1 and worse["champion_version"] == 2
    assert len(client.search_model_versions(f"name = '{m}'")) == 3

    # different evaluation data: the champion's recorded score does not count, it is scored again
    other = _promote(store, m, "twin", f"promote.eval_csv={store['data'] / 'corpus' / 'val.csv'}")
    assert other["eval_digest"] != good["eval_digest"]
    v3 = client.get_model_version(m, "3")
    assert v3.tags["promotion.champion_score_source"] == "re-evaluated on this data"
    assert other["champion_score"] == other["challenger_score"] and not other["promoted"]

    forced = _promote(store, m, "bad", "promote.force=true", "promote.reason=rollback drill")
    assert forced["promoted"] and forced["champion_version"] == 1
    v1 = client.get_model_version(m, "1")
    assert v1.tags["promotion.forced"] == "true" and v1.tags["promotion.reason"] == "rollback drill"
    assert "Forced: rollback drill" in v1.description
    assert client.get_model_version(m, "2").tags["promotion.replaced_by"] == "1"
    # v1 was promoted three times: the earlier decisions are kept, not overwritten
    history = [json.loads(v1.tags[f"promotion.history.{i}"]) for i in (1, 2)]
    assert [h["promotion.why"] for h in history] == [first["why"], worse["why"]]
    assert [h["promotion.decision"] for h in history] == ["promoted", "kept champion"]
    assert "promotion.history.3" not in v1.tags


def test_eval_rows_whose_phrase_is_missing_are_reported(store, tmp_path, capsys):
    import csv

    rows = list(csv.reader((store["data"] / "corpus" / "test.csv").open(newline="")))
    bad = tmp_path / "eval.csv"
    with bad.open("w", newline="") as fh:
        csv.writer(fh).writerows([*rows, ["The soup was cold.", "lobster thermidor"]])
    _promote(store, "dropped-rows", "good", f"promote.eval_csv={bad}")
    out = capsys.readouterr().out
    assert f"{bad}: 1 of {len(rows)} rows dropped" in out and "lobster thermidor" in out


def test_force_needs_a_reason(store):
    from albert_exp.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="reason"):
        load_config(None, ["promote.force=true"])


def test_lock_excludes_and_breaks_stale_locks(store):
    from mlflow.tracking import MlflowClient

    from albert_exp.errors import UserError
    from albert_exp.promote import registry_lock
    from albert_exp.tracking import Registry

    client, registry = MlflowClient(), Registry()
    inside, order = [], []

    def worker(tag):
        with registry_lock(registry, "locked", 30, 600):
            inside.append(tag)
            assert len(inside) == 1, "two holders at once"
            order.append(tag)
            time.sleep(0.3)
            inside.remove(tag)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(order) == [0, 1, 2]
    with registry_lock(registry, "locked", 5, 600):
        with pytest.raises(UserError, match="holds the lock"):
            with registry_lock(registry, "locked", 0.5, 600):
                pass
    client.create_registered_model("locked.promotion-lock", tags={"owner": "dead", "since": "0"})
    with registry_lock(registry, "locked", 5, 60):  # older than lock_stale_s: broken
        pass
    assert not client.search_registered_models("name = 'locked.promotion-lock'")


def test_two_promotions_at_once_leave_consistent_aliases(store):
    """Two processes promote the good and the bad run of a fresh model at the same time: whatever the order,
    the champion is the good one and each version's tags tell the decision that was taken."""
    from mlflow.tracking import MlflowClient

    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"]}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "albert_exp",
                "promote",
                "--workdir",
                str(store["data"]),
                "--set",
                " ".join([*TINY, "name=promote-test", "promote.model_name=race"]),
                "--run-id",
                store["runs"][run],
            ],
            cwd=store["tmp"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for run in ("bad", "good")
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    client = MlflowClient()
    champion = client.get_model_version_by_alias("race", "champion")
    assert champion.run_id == store["runs"]["good"]
    versions = client.search_model_versions("name = 'race'")
    assert len(versions) == 2
    assert champion.tags["promotion.decision"] == "promoted"
    loser = next(v for v in versions if v.version != champion.version)
    if loser.tags["promotion.decision"] == "promoted":  # bad went first, then was replaced
        assert champion.tags["promotion.champion_version"] == str(loser.version)
    else:
        assert loser.tags["promotion.champion_version"] == str(champion.version)


def test_champion_is_served_over_http(store):
    model = "served"
    _promote(store, model, "good")
    with served_model(f"models:/{model}@champion", store["uri"], store["tmp"], timeout_s=180) as port:
        texts = ["The waiter was lovely.", "We loved the crispy tofu bao and the miso soup."]
        body = json.dumps({"dataframe_records": [{"text": t} for t in texts]}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        answer = json.loads(urllib.request.urlopen(req, timeout=60).read())["predictions"]
    assert len(answer) == 2 and set(answer[0]) >= {"phrases", "spans", "tokens"}
    # The server answers what the champion answers in process (spans may be empty for a tiny model: then
    # this still compares tokens and scores), and every span is the text at its offsets.
    import mlflow
    import pandas as pd

    local = mlflow.pyfunc.load_model(f"models:/{model}@champion").predict(pd.DataFrame({"text": texts}))
    for row, (_, want), text in zip(answer, local.iterrows(), texts, strict=True):
        assert row["phrases"] == list(want["phrases"]) and len(row["tokens"]) == len(want["tokens"]) > 0
        assert [t["tag"] for t in row["tokens"]] == [t["tag"] for t in want["tokens"]]
        assert [s["text"] for s in row["spans"]] == row["phrases"]
        assert all(text[s["start"] : s["end"]] == s["text"] for s in row["spans"])
