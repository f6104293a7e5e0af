"""Lineage: where a model or a run came from, stage by stage.

    albert-exp lineage models:/toy-phrase-tagger@champion
    albert-exp lineage runs:/<run id> --json

Every stage run records the runs that produced its inputs as `upstream.<stage>` tags (found from the inputs
themselves: each stage output holds a results.json naming its run) and logs its inputs as MLflow dataset inputs
with their digests. `lineage` walks those tags from a registered model version or a run: model version ->
fine-tune run -> pretrain run -> pretraining-data run (manifest sha256) -> vocab -> corpus (manifest sha256).
A run of `main` that reused an earlier output is followed to the run that computed it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from albert_exp.errors import UserError
from albert_exp.tracking import UPSTREAM

# Tags worth printing per run (digests of what it read or wrote).
SHOWN = ("albert_exp.key", "corpus_sha256", "manifest_sha256", "dataset_digest", "output_dir", "killed_reason")


def _start(uri: str) -> tuple[dict[str, Any] | None, str]:
    """(model version info or None, run id) of a models:/ or runs:/ URI."""
    from albert_exp.tracking import Registry

    if uri.startswith("runs:/"):
        return None, uri.removeprefix("runs:/").split("/")[0]
    if uri.startswith("models:/"):
        ref = uri.removeprefix("models:/")
        registry = Registry()
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = registry.by_alias(name, alias)
        else:
            name, _, number = ref.partition("/")
            version = registry.version(name, number)
        if version is None:
            raise UserError(f"no model version {uri}", where=uri, fix="check the name and alias (`mlflow ui`)")
        info = {"model": name, "version": version.version, "run_id": version.run_id, "tags": dict(version.tags)}
        return info, version.run_id
    raise UserError(f"not a model or run URI: {uri!r}", where=uri, fix="give models:/<name>@<alias> or runs:/<id>")


def chain(uri: str) -> dict[str, Any]:
    """The lineage of `uri` as data: the model version (if any) and the runs, nearest first."""
    from albert_exp.tracking import REUSED, get_run, run_url

    model, run_id = _start(uri)
    runs: list[dict[str, Any]] = []
    seen: set[str] = set()
    queue = [run_id]
    while queue:
        rid = queue.pop(0)
        if rid in seen:
            continue
        seen.add(rid)
        run = get_run(rid)
        if run is None:
            runs.append({"run_id": rid, "missing": True})
            continue
        entry = {
            "stage": run.tags.get("stage", "?"),
            "run_id": rid,
            "name": run.name,
            "status": run.status,
            "url": run_url(run),
            "tags": {k: run.tags[k] for k in SHOWN if k in run.tags},
            "inputs": run.inputs,
            "upstream": {k.removeprefix(UPSTREAM): v for k, v in run.tags.items() if k.startswith(UPSTREAM)},
        }
        if REUSED in run.tags:
            entry["reuses"] = run.tags[REUSED]
            queue.append(run.tags[REUSED])
        runs.append(entry)
        queue.extend(entry["upstream"].values())
    return {"uri": uri, "model_version": model, "runs": runs}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("uri", help="models:/<name>@<alias>, models:/<name>/<version> or runs:/<run id>")
    parser.add_argument("--json", action="store_true", help="print the chain as JSON")


def main(args: argparse.Namespace) -> dict[str, Any]:
    data = chain(args.uri)
    if args.json:
        print(json.dumps(data, indent=2))
        return {"print_json": False}
    m = data["model_version"]
    if m:
        print(f"model {m['model']} v{m['version']} <- run {m['run_id']}")
    for i, r in enumerate(data["runs"]):
        if r.get("missing"):
            print(f"{'  ' * min(i, 1)}- run {r['run_id']}: not in this tracking store")
            continue
        extra = ", ".join(f"{k}={v}" for k, v in r["tags"].items() if k != "output_dir")
        reuse = f" (reuses {r['reuses']})" if "reuses" in r else ""
        print(f"- {r['stage']:16s} {r['run_id']} {r['status']}{reuse}  {extra}")
        print(f"    {r['url']}")
        for d in r["inputs"]:
            print(f"    input {d['name']} digest {d['digest']}")
    return {"print_json": False}
