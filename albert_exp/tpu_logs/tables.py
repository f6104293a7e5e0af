"""What an ingest writes beside its run: the table (CSV + Parquet), checkpoints, overlaps, restarts and the
loss curve, and the rule that decides which attempt's value a step keeps. Below parse, summary and ingest
(each uses it; it uses none of them), so that the parsing process can write the tables too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# A restart resumes from its last checkpoint and re-runs the steps after it: the earlier attempt's values there
# belong to a branch of training that no longer exists, the later attempt's are the model's history.
OVERLAP_RULE = "a step logged by several attempts keeps the latest attempt's value"
OVERLAP_TAG = "tpu_logs.overlap"  # on a run where a later attempt's value was logged after an earlier one's


def write_tables(out: Path, result: Any) -> None:
    """Table (CSV + Parquet), checkpoints, overlaps, restarts and the loss curve -> out."""
    from albert_exp.tpu_logs.plot import loss_curve

    out.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(out / "table.csv", index=False)
    result.table.to_parquet(out / "table.parquet", index=False)
    result.checkpoints.to_csv(out / "checkpoints.csv", index=False)
    result.overlaps.to_csv(out / "overlaps.csv", index=False)
    (out / "restarts.json").write_text(json.dumps(result.restarts, indent=2, default=str))
    loss_curve(result.table, result.restarts, out / "loss_curve.png")
