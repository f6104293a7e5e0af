"""Screenshots of what a user sees in the MLflow UI after `make demo` (issue: "looked at in a browser").

    make ui-screenshots                      # after `make demo`: store ./mlflow.db, pictures in docs/ui/
    python scripts/ui_screenshots.py --store sqlite:///mlflow.db --out docs/ui --config experiments/toy_realistic.yaml

Starts `mlflow ui` on 127.0.0.1 (a free port; never another interface) over the store, finds the experiment's
`main` parent run, a fine-tune run, the tune run and the registered model through MLflow's API, and saves one
PNG per page with headless Chromium from the Debian package (`chromium-headless-shell`, or `chromium`):
nothing is downloaded. Pages are single-page-app routes: each shot waits, over Chrome's DevTools protocol, until
the page shows what it is for (the charts' SVGs, the table's rows), then closes the assistant panel.
Not part of the test run: it needs a browser and a demo store.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser")
# MLflow 3.17's UI opens experiments in its GenAI view unless the URL (or the browser's saved choice) says
# "Model training"; links we print carry this.
MODEL_TRAINING = "workflowType=machine_learning"
SHOT_TIMEOUT_S = 300  # seconds a shot may take (a loaded 2-core machine needs ~2 min for the first one)
SETTLE_S = 3
# when a page counts as drawn: plotly's chart SVGs for the charts, else rows or the page's main content
READY = {
    "charts": "document.querySelectorAll('svg.main-svg').length >= 3",
    "page": "document.readyState === 'complete' && document.querySelectorAll('[role=row], table, h1, h2').length > 0",
}
# MLflow 3.17 opens its "Assistant" side panel on run pages; it hides a third of the picture
CLOSE_ASSISTANT = """(() => {
  let box = document.querySelector('button[aria-label="New Chat"]');
  while (box && !box.querySelector('button[aria-label="Close"]')) box = box.parentElement;
  const close = box && box.querySelector('button[aria-label="Close"]');
  if (close) close.click();
  return !!close;
})()"""


def _browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    sys.exit("ui-screenshots: no headless Chromium; install Debian's package: apt-get install chromium-headless-shell")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_ui(store: str, port: int) -> Iterator[str]:
    """`mlflow ui` on loopback; yields its base URL once /health answers, stops it afterwards."""
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin), "ui", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    sys.exit(f"ui-screenshots: `{' '.join(cmd)}` did not start (exit {proc.poll()})")
                time.sleep(0.5)
        # warm up: the first API calls import the server's lazy parts, which the browser would otherwise wait on
        for path in ("/", "/ajax-api/2.0/mlflow/experiments/search?max_results=10"):
            with contextlib.suppress(OSError), urllib.request.urlopen(base + path, timeout=120):
                pass
        yield base
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()


async def _cdp_shot(browser: str, url: str, out: Path, ready_js: str, size: str) -> None:
    """Open `url` in headless Chromium, wait (real time) until `ready_js` is true, close MLflow's assistant panel,
    save a PNG. Chrome's DevTools protocol over aiohttp's websocket client (aiohttp comes with MLflow)."""
    import aiohttp

    with tempfile.TemporaryDirectory(prefix="ui-shot-") as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",  # root in a container; the page is our own UI on loopback
            "--disable-gpu",
            "--hide-scrollbars",
            # a profile of its own: with the shared default one, a browser left over from an earlier run takes
            # the request and this one waits forever
            f"--user-data-dir={profile}",
            f"--window-size={size}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",  # Chromium picks a free port and writes it to DevToolsActivePort
            "about:blank",
        ]
        # no pipes (Chromium's helpers inherit them and outlive it); its own process group, killed whole
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.time() + SHOT_TIMEOUT_S
            while not (port_file.exists() and port_file.read_text().strip()):
                if proc.poll() is not None or time.time() > deadline:
                    sys.exit(f"ui-screenshots: Chromium did not start (exit {proc.poll()})")
                await asyncio.sleep(0.2)
            port = port_file.read_text().split()[0]
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/json") as resp:
                    page = next(t for t in await resp.json() if t["type"] == "page")
                async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    calls = iter(range(1, 1 << 30))

                    async def call(method: str, **params: Any) -> dict:
                        mid = next(calls)
                        await ws.send_json({"id": mid, "method": method, "params": params})
                        async for msg in ws:
                            answer = json.loads(msg.data)
                            if answer.get("id") == mid:
                                return answer.get("result", {})
                        sys.exit("ui-screenshots: Chromium closed the connection")

                    async def true(js: str) -> bool:
                        r = await call("Runtime.evaluate", expression=js, returnByValue=True)
                        return bool(r.get("result", {}).get("value"))

                    await call("Page.navigate", url=url)
                    while not await true(ready_js):
                        if time.time() > deadline:
                            sys.exit(f"ui-screenshots: {url} was not ready in {SHOT_TIMEOUT_S} s ({ready_js})")
                        await asyncio.sleep(1)
                    await true(CLOSE_ASSISTANT)
                    await asyncio.sleep(SETTLE_S)  # the last fetches and the charts' drawing
                    shot = await call("Page.captureScreenshot", format="png")
            out.write_bytes(base64.b64decode(shot["data"]))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def shoot(browser: str, url: str, out: Path, ready_js: str = READY["page"], size: str = "1800,1100") -> Path:
    """One PNG of one page, taken once the page says it is drawn (`ready_js`), not after a guessed delay: the
    charts of a run load lazily, and a screenshot at a fixed (virtual) time showed their spinners."""
    out.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(_cdp_shot(browser, url, out, ready_js, size))
    if not out.exists() or out.stat().st_size == 0:
        sys.exit(f"ui-screenshots: Chromium wrote no picture for {url}")
    return out


def pages(store: str, experiment: str) -> dict[str, str]:
    """name -> UI route (after the '#') of the pages worth a picture, found through MLflow's API."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store, registry_uri=store)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        sys.exit(f"ui-screenshots: no experiment {experiment!r} in {store}; run `make demo` first")
    eid = exp.experiment_id
    routes = {"runs_table": f"/experiments/{eid}/runs?{MODEL_TRAINING}"}
    runs = client.search_runs([eid], order_by=["attributes.start_time DESC"], max_results=500)
    by_stage: dict[str, list] = {}
    for r in runs:
        by_stage.setdefault(r.data.tags.get("stage", ""), []).append(r)
    if by_stage.get("main"):
        routes["main_run"] = f"/experiments/{eid}/runs/{by_stage['main'][0].info.run_id}?{MODEL_TRAINING}"
    if by_stage.get("finetune"):
        ft = next((r for r in by_stage["finetune"] if "optuna_trial" not in r.data.tags), by_stage["finetune"][0])
        routes["finetune_charts"] = f"/experiments/{eid}/runs/{ft.info.run_id}/model-metrics?{MODEL_TRAINING}"
    if by_stage.get("tune"):
        tune = by_stage["tune"][0]
        trials = [r.info.run_id for r in runs if r.data.tags.get("mlflow.parentRunId") == tune.info.run_id]
        if trials:
            ids = ",".join(f'"{t}"' for t in trials)
            routes["tune_comparison"] = f'/compare-runs?runs=[{ids}]&experiments=["{eid}"]'
    models = {mv.name for mv in client.search_model_versions(max_results=200)}
    if models:
        routes["registered_model"] = f"/models/{sorted(models)[0]}"
    return routes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", default="sqlite:///mlflow.db", help="the tracking/registry store of the demo")
    p.add_argument("--config", default="experiments/toy_realistic.yaml", help="the demo's experiment YAML")
    p.add_argument("--experiment", default=None, help="experiment name; default: the config's `name:`")
    p.add_argument("--out", default="docs/ui", help="folder for the PNGs")
    args = p.parse_args(argv)
    os.environ.setdefault("MLFLOW_TRACKING_URI", args.store)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # the UI server too: no network at run time
    browser = _browser()
    if args.experiment is None:
        from albert_exp.config import load_config

        args.experiment = load_config(args.config).name
    routes = pages(args.store, args.experiment)
    with mlflow_ui(args.store, _free_port()) as base:
        for name, route in routes.items():
            ready = READY["charts" if name.endswith("_charts") else "page"]
            path = shoot(browser, f"{base}/#{route}", Path(args.out) / f"{name}.png", ready)
            print(f"{path}  <- {base}/#{route}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
