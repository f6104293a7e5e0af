"""Promote stage: register a fine-tuned model, alias it `challenger`, move `champion` only when it is better.

    albert-exp promote --config experiments/toy.yaml                       # the best trial of the last `tune`
    albert-exp promote --config experiments/toy.yaml --run-id <finetune run> --margin 0.002
    albert-exp promote --config experiments/toy.yaml --run-id <run> --force --reason "hotfix for dish X"

The challenger and the champion are scored on the same evaluation data (default: the finetune test CSV),
identified by the sha256 of the file. A champion score recorded on its version with the same digest and metric
is reused; otherwise (different data) the champion is evaluated again now. `champion` moves only when the
challenger beats it by more than `margin` (a tie keeps the champion). Both scores, the digest, the decision and
any `--force --reason` are written as tags and a description on the challenger's version.

Two promotions of the same model at once: the read-compare-move runs under a lock that works on any MLflow
registry (SQLite, PostgreSQL, a tracking server): creating a registered model is atomic in every store (the
name is unique), so creating `<model>.promotion-lock` is a compare-and-set. A registry tag cannot be one
(set_tag is last-writer-wins), and a file lock only guards one machine. The lock is broken only when its
holder is dead (its pid on this host, its heartbeat from elsewhere), and released only by its holder.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from albert_exp.config import ExperimentConfig, PromoteConfig
from albert_exp.errors import UserError
from albert_exp.stage import Context, Stage, StageResult
from albert_exp.tracking import Registry, RunView, download_artifacts, get_run, has_model, tracking_uri

ARTIFACT = "phrase_extractor"  # the pyfunc every finetune run logs
HF_ARTIFACT = "hf_model"


def model_name(cfg: ExperimentConfig) -> str:
    return cfg.promote.model_name or f"{cfg.name}-phrase-tagger"


def evaluate_run(run_id: str, eval_csv: Path, cfg: ExperimentConfig) -> dict[str, float]:
    """Token and phrase metrics of a finetune run's HF model on a labelled CSV."""
    from transformers import AlbertForTokenClassification

    from albert_exp.data import encode, encode_options
    from albert_exp.finetune import evaluate
    from albert_exp.hf_local import load_model, load_tokenizer

    if _is_crf(run_id):  # the CRF baseline: no HF model; scored through its pyfunc, on words
        from albert_exp.serving import score_pyfunc

        return score_pyfunc(f"runs:/{run_id}/{ARTIFACT}", eval_csv, cfg.finetune)
    local = download_artifacts(f"runs:/{run_id}/{HF_ARTIFACT}")
    tokenizer = load_tokenizer(local)
    model = load_model(AlbertForTokenClassification, local, use_safetensors=True)
    f = cfg.finetune
    data = encode(eval_csv, tokenizer, **encode_options(f))  # windows and word view as in fine-tuning
    if data.dropped:  # scored without them: say so (finetune.on_missing_phrase: error makes them fatal)
        d = data.dropped[0]
        print(
            f"warning: {eval_csv}: {len(data.dropped)} of {len(data.texts) + len(data.dropped)} rows dropped from the "
            f"evaluation: their phrase is not in the text (e.g. row {d['row']}: {d['missing']})"
        )
    metrics, _ = evaluate(model, data, f.eval_batch_size, tokenizer.pad_token_id)
    return metrics


def _is_crf(run_id: str) -> bool:
    run = get_run(run_id)
    return run is not None and run.tags.get("model_kind") == "crf"


def file_digest(path: Path) -> str:
    from albert_exp.data import read_labelled_csv

    return read_labelled_csv(path)[1]


@contextmanager
def registry_lock(registry: Registry, name: str, timeout_s: float, stale_s: float):
    """Mutual exclusion between promotions of `name`, through the registry's unique model names.

    The lock records its holder (host, pid) and a heartbeat the holder refreshes while it works. It is broken
    only when its holder is known dead: on this host, when its pid is gone; from another host, when its
    heartbeat is older than `stale_s`. A holder that is alive is never overtaken, however long it evaluates.
    The lock is released only by its own holder.
    """
    lock = f"{name}.promotion-lock"
    host, pid = socket.gethostname(), os.getpid()
    owner = f"{getpass.getuser()}@{host}:{pid}:{uuid.uuid4().hex[:8]}"
    deadline = time.time() + timeout_s
    while True:
        now = f"{time.time():.3f}"
        tags = {"owner": owner, "host": host, "pid": str(pid), "since": now, "heartbeat": now}
        if registry.create_model(lock, tags=tags, description="held while a promotion compares and moves aliases"):
            break
        held = registry.model_tags(lock)
        if held is None:
            continue  # released meanwhile
        dead = _holder_dead(held, host, stale_s)
        if dead and (registry.model_tags(lock) or {}).get("owner") == held.get("owner"):
            print(f"breaking the promotion lock of {held.get('owner')}: {dead}")
            registry.delete_model(lock)
            continue
        if time.time() > deadline:
            raise UserError(
                f"another promotion of '{name}' holds the lock ({held.get('owner')})",
                where=lock,
                fix=f"wait for it, or delete the registered model '{lock}' if its owner is dead",
            )
        time.sleep(0.2)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(registry, lock, owner, stop, stale_s), daemon=True)
    beat.start()
    try:
        yield owner
    finally:
        stop.set()
        beat.join()
        if (registry.model_tags(lock) or {}).get("owner") == owner:
            registry.delete_model(lock)
        else:
            print(f"the promotion lock '{lock}' was no longer held by this promotion: left as it is")


def _holder_dead(tags: dict, host: str, stale_s: float) -> str:
    """Why the lock's holder is dead ("" while it may be alive)."""
    pid = tags.get("pid", "")
    if tags.get("host") == host and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return f"process {pid} on {host} is gone"
        except PermissionError:
            pass  # alive, another user's process
        return ""
    age = time.time() - float(tags.get("heartbeat") or tags.get("since") or 0)
    return f"no heartbeat for {age:.0f} s (> lock_stale_s {stale_s:g})" if age > stale_s else ""


def _heartbeat(registry: Registry, lock: str, owner: str, stop: threading.Event, stale_s: float) -> None:
    """Refresh the lock's heartbeat a few times per `stale_s` while the promotion runs."""
    while not stop.wait(max(0.05, min(stale_s / 4, 30.0))):
        try:
            if (registry.model_tags(lock) or {}).get("owner") != owner:
                return
            registry.set_model_tag(lock, "heartbeat", f"{time.time():.3f}")
        except Exception:  # a missed beat only makes the lock look older
            pass


def _archive_decision(registry: Registry, name: str, run_id: str) -> None:
    """A repeated promotion of a version keeps the earlier decision: its tags go to promotion.history.N."""
    version = registry.version_of_run(name, run_id)
    tags = dict(version.tags) if version is not None else {}
    if "promotion.decision" not in tags:
        return
    n = 1 + sum(k.startswith("promotion.history.") for k in tags)
    keep = {k: v for k, v in tags.items() if k.startswith(("promotion.", "eval_")) and "history" not in k}
    registry.set_version_tags(name, version.version, {f"promotion.history.{n}": json.dumps(keep)[:5000]})


def decide(challenger: float, champion: float | None, margin: float, force: bool) -> tuple[bool, str]:
    """The promotion rule, as a plain function."""
    if force:
        return True, "forced"
    if champion is None:
        return True, "no champion yet"
    plus = f" + margin {margin:g}" if margin else ""
    if challenger > champion + margin:
        return True, f"challenger {challenger:.4f} > champion {champion:.4f}{plus}"
    if challenger == champion:
        return False, "equal: the champion stays"
    return False, f"challenger {challenger:.4f} {'<' if challenger < champion else '<='} champion {champion:.4f}{plus}"


def _eval_csv(cfg: ExperimentConfig) -> Path:
    from albert_exp.finetune import data_paths

    return Path(cfg.promote.eval_csv) if cfg.promote.eval_csv else data_paths(cfg)["test"]


def _check_candidate(run_id: str) -> RunView:
    """The candidate run: it must exist in this store and carry the phrase extractor."""
    source = get_run(run_id)
    if source is None:
        raise UserError(
            f"no MLflow run {run_id} in {tracking_uri()}",
            where="promote.run_id",
            fix="give a finetune run id from this tracking store",
        )
    if not has_model(f"runs:/{run_id}/{ARTIFACT}"):
        raise UserError(
            f"run {run_id} has no '{ARTIFACT}' model",
            where="promote.run_id",
            fix="promote a finetune run (they log the phrase extractor)",
        )
    return source


@dataclass
class Comparison:
    """One promotion's comparison: the challenger's version and score against the champion's, on one dataset."""

    name: str
    metric: str
    eval_csv: Path
    digest: str
    version: Any  # the challenger's registered version
    challenger_score: float
    champ: Any | None  # the champion's version before this promotion
    champ_score: float | None = None
    champ_how: str = "none"  # where the champion's score comes from
    promoted: bool = False
    why: str = ""

    @property
    def decision(self) -> str:
        return "promoted" if self.promoted else "kept champion"

    @property
    def champion_is_challenger(self) -> bool:
        return self.champ is not None and self.champ.version == self.version.version


def _score_champion(c: Comparison, cfg: ExperimentConfig) -> None:
    """The champion's score on the same data: recorded on its version when the digest and metric match, else
    evaluated now."""
    if c.champ is None:
        return
    if c.champion_is_challenger:
        c.champ_score, c.champ_how = c.challenger_score, "this version"
        return
    t = c.champ.tags
    if t.get("eval_digest") == c.digest and t.get("eval_metric") == c.metric and "eval_score" in t:
        c.champ_score, c.champ_how = float(t["eval_score"]), "recorded on the same data"
    else:  # scored on other data (or never): score it now on this data
        c.champ_score = evaluate_run(c.champ.run_id, c.eval_csv, cfg)[c.metric]
        c.champ_how = "re-evaluated on this data"


def _version_tags(c: Comparison, p: PromoteConfig, owner: str) -> dict[str, Any]:
    return {
        "eval_metric": c.metric,
        "eval_score": repr(c.challenger_score),
        "eval_digest": c.digest,
        "eval_data": str(c.eval_csv),
        "promotion.decision": c.decision,
        "promotion.why": c.why,
        "promotion.champion_version": c.champ.version if c.champ else "",
        "promotion.champion_score": "" if c.champ_score is None else repr(c.champ_score),
        "promotion.champion_score_source": c.champ_how,
        "promotion.margin": p.margin,
        "promotion.forced": str(p.force).lower(),
        "promotion.reason": p.reason,
        "promotion.by": owner,
        "promotion.time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _describe(registry: Registry, c: Comparison, p: PromoteConfig) -> str:
    """The decision in words on the challenger's version, and the current champion on the model's own page (the
    registry list shows only one alias per row)."""
    champ_text = "none" if c.champ_score is None else f"v{c.champ.version} {c.champ_score:.4f} ({c.champ_how})"
    data = f"{c.metric.replace('_', ' ')}, {c.eval_csv.name} sha256 {c.digest[:12]}…"
    description = (
        f"{c.decision}: {c.why} ({data}). Challenger v{c.version.version} {c.challenger_score:.4f}, champion "
        f"{champ_text}." + (f" Forced: {p.reason}" if p.force else "")
    )
    registry.describe_version(c.name, c.version.version, description)
    now = c.version.version if c.promoted else (c.champ.version if c.champ else "")
    now_score = c.challenger_score if c.promoted else c.champ_score
    if now:
        registry.describe_model(
            c.name,
            f"Champion: v{now}, {c.metric.replace('_', ' ')} {now_score:.4f} on {c.eval_csv.name} "
            f"(sha256 {c.digest[:12]}…). Last promotion: v{c.version.version} {c.decision}: {c.why}.",
            {
                "champion_version": now,
                "champion_score": f"{now_score:.4f}",
                "champion_metric": c.metric,
                "eval_data": c.eval_csv.name,
                "eval_digest": c.digest,
            },
        )
    return description


def _compare_and_move(
    cfg: ExperimentConfig, registry: Registry, source: RunView, scores: dict[str, float], eval_csv: Path, digest: str
) -> tuple[Comparison, str]:
    """Under the promotion lock: register the candidate as `challenger`, compare it with the champion, move
    `champion` when it wins, and record the decision on both versions."""
    p, name, run_id = cfg.promote, model_name(cfg), source.run_id
    with registry_lock(registry, name, p.lock_timeout_s, p.lock_stale_s) as owner:
        version = registry.version_of_run(name, run_id) or registry.register(
            f"runs:/{run_id}/{ARTIFACT}",
            name,
            tags={"dataset_digest": source.tags.get("dataset_digest", ""), "source_run_id": run_id},
        )
        registry.set_alias(name, "challenger", version.version)
        c = Comparison(name, p.metric, eval_csv, digest, version, scores[p.metric], registry.by_alias(name, "champion"))
        _score_champion(c, cfg)
        c.promoted, c.why = decide(c.challenger_score, c.champ_score, p.margin, p.force)
        if c.champion_is_challenger:
            c.promoted, c.why = False, "already champion"
        _archive_decision(registry, name, run_id)
        registry.set_version_tags(name, version.version, _version_tags(c, p, owner))
        if c.promoted:
            registry.set_alias(name, "champion", version.version)
            if c.champ is not None:
                registry.set_version_tags(name, c.champ.version, {"promotion.replaced_by": version.version})
        return c, _describe(registry, c, p)


def candidates(cfg: ExperimentConfig, upstream: Mapping[str, StageResult]) -> list[str]:
    """The runs to promote, in turn: promote.run_id; else the fine-tune run, then the search's best trial."""
    if cfg.promote.run_id:
        return [cfg.promote.run_id]
    ids = [r for r in (_run_of(upstream, "finetune"), _run_of(upstream, "tune")) if r]
    if not ids:
        raise UserError(
            "nothing to promote",
            where=str(cfg.root),
            fix="run `albert-exp tune` or `albert-exp finetune` first, or give --run-id",
        )
    return list(dict.fromkeys(ids))


def _run_of(upstream: Mapping[str, StageResult], stage: str) -> str | None:
    result = upstream.get(stage)
    if result is None:
        return None
    return result.get("best_trial_run_id") if stage == "tune" else result.run_id


def promote_one(cfg: ExperimentConfig, run_id: str, tracker: Any, step: int) -> dict[str, Any]:
    """Register one candidate, compare it with the champion on the same data, move `champion` if it wins."""
    name, metric = model_name(cfg), cfg.promote.metric
    eval_csv = _eval_csv(cfg)
    digest = file_digest(eval_csv)
    registry = Registry()
    source = _check_candidate(run_id)
    scores = evaluate_run(run_id, eval_csv, cfg)
    if metric not in scores:
        raise UserError(
            f"the candidate has no {metric} (a CRF baseline is scored on words, not tokens)",
            where="promote.metric",
            fix="compare with promote.metric: phrase_f1",
        )
    c, description = _compare_and_move(cfg, registry, source, scores, eval_csv, digest)
    version = c.version
    print(f"{name} v{version.version}: {description}")
    tracker.log_metrics(
        {f"challenger/{k}": v for k, v in scores.items()}
        | ({f"champion/{metric}": c.champ_score} if c.champ_score is not None else {}),
        step=step,
    )
    champion_now = registry.by_alias(name, "champion")
    champion_metrics = (
        scores if champion_now.version == version.version else evaluate_run(champion_now.run_id, eval_csv, cfg)
    )
    return {
        "model_name": name,
        "version": int(version.version),
        "promoted": c.promoted,
        "decision": c.decision,
        "why": c.why,
        "metric": metric,
        "challenger_score": c.challenger_score,
        "champion_score": c.champ_score,
        "champion_version": int(champion_now.version),
        "eval_digest": digest,
        "eval_csv": str(eval_csv),
        "source_run_id": run_id,
        "challenger_metrics": scores,
        "champion_metrics": champion_metrics,
        "champion_uri": f"models:/{name}@champion",
    }


def compute(ctx: Context) -> dict[str, Any]:
    """Each candidate in turn through the same rule; the results are the last decision's, with all of them."""
    decisions = [promote_one(ctx.cfg, run_id, ctx.tracker, i) for i, run_id in enumerate(ctx.prepared)]
    last = decisions[-1]
    ctx.tracker.set_tags(
        {
            "registered_model": last["model_name"],
            "model_version": last["version"],
            "decision": last["decision"],
            "source_run_id": last["source_run_id"],
            "eval_digest": last["eval_digest"],
            "upstream.finetune": decisions[0]["source_run_id"],
        }
    )
    return {
        **last,
        "decisions": [{k: d[k] for k in ("version", "decision", "why", "source_run_id")} for d in decisions],
    }


def key(cfg: ExperimentConfig, upstream: Mapping[str, StageResult]) -> str:
    """Promotion's identity: its settings, the candidate runs and the evaluation data's digest."""
    from albert_exp.config import identity_settings
    from albert_exp.digest import stage_key

    settings = {k: v for k, v in identity_settings(cfg.promote).items()}
    inputs = {"candidates": ",".join(candidates(cfg, upstream)), "eval": file_digest(_eval_csv(cfg))}
    return stage_key("promote", {"promote": settings, "model": model_name(cfg)}, inputs)


def reusable(cfg: ExperimentConfig, upstream: Mapping[str, StageResult], results: dict[str, Any]) -> bool:
    """An earlier promotion of the same candidates stands while the champion is the one it left."""
    champion = Registry().by_alias(model_name(cfg), "champion")
    return champion is not None and str(results.get("champion_version")) == str(champion.version)


def needs(cfg: ExperimentConfig) -> tuple[str, ...]:
    if cfg.promote.run_id:
        return ()
    return ("finetune",) + ("tune",) * ("tune" in cfg.stages)


STAGE = Stage(
    name="promote",
    section="promote",
    compute=compute,
    needs=needs,
    prepare=lambda ctx: candidates(ctx.cfg, ctx.upstream),
    describe=model_name,
    key=key,
    has_output=False,
    reusable=reusable,
)
