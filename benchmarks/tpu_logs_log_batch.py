"""The baseline `benchmarks/tpu_logs.py` compares with (issue #14): one regex over the glog lines of a TPU log,
first value per (metric, step), `MlflowClient.log_batch` in chunks of 1,000 into one new run.

    python benchmarks/tpu_logs_log_batch.py LOG --year 2020 --experiment baseline
"""

import argparse
import re
from datetime import UTC, datetime

LINE = re.compile(
    r"I(\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6}) [^\]]*\] "
    r"(?:loss = (\S+), step = (\d+)|(global_step|examples)/sec: (\S+)|  (\w+) = (\S+)$)"
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--year", type=int, required=True)
    ap.add_argument("--experiment", default="baseline")
    args = ap.parse_args()
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    points: dict[tuple[str, int], tuple[float, int]] = {}
    step = eval_step = 0
    with open(args.log, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not (m := LINE.match(line)):
                continue
            mo, d, hh, mm, ss, us, loss, loss_step, rate, rate_value, key, value = m.groups()
            t = datetime(args.year, int(mo), int(d), int(hh), int(mm), int(ss), int(us), tzinfo=UTC)
            ms = int(t.timestamp() * 1000)
            if loss is not None:
                step = int(loss_step)
                points.setdefault(("train/loss", step), (float(loss), ms))
            elif rate is not None:
                points.setdefault((f"train/{rate}_per_s", step), (float(rate_value), ms))
            elif key == "global_step":
                eval_step = int(value)
            else:
                points.setdefault((f"eval/{key}", eval_step), (float(value), ms))
    metrics = [Metric(k, v, ms, s) for (k, s), (v, ms) in points.items()]
    client = MlflowClient()
    exp = client.get_experiment_by_name(args.experiment)
    run = client.create_run(exp.experiment_id if exp else client.create_experiment(args.experiment))
    for i in range(0, len(metrics), 1000):
        client.log_batch(run.info.run_id, metrics=metrics[i : i + 1000])
    client.set_terminated(run.info.run_id)
    print(len(metrics))


if __name__ == "__main__":
    main()
