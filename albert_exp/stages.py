"""Every declared stage, in dependency order: the one list `main`, the CLI and the README's code map read.

Each entry is the `STAGE` declaration at the end of its module (albert_exp/stage.py says what a declaration
holds); albert_exp/executor.py runs them. Adding a stage is adding its module's declaration here.
"""

from __future__ import annotations

from pathlib import Path

from albert_exp import (
    baseline,
    corpus,
    curve,
    finetune,
    heldout,
    pretrain,
    pretraining_data,
    promote,
    scratch,
    tune,
    vocab,
)
from albert_exp.stage import Stage

MODULES = (corpus, vocab, pretraining_data, heldout, pretrain, finetune, scratch, baseline, curve, tune, promote)
STAGES: dict[str, Stage] = {m.STAGE.name: m.STAGE for m in MODULES}
# what an experiment's `stages:` may name (a stage made on demand is not listed)
LISTED = tuple(name for name, s in STAGES.items() if not s.auto)


def in_order(names: list[str]) -> list[Stage]:
    """The named stages in dependency order (the declaration order above)."""
    return [s for name, s in STAGES.items() if name in names]


def code_map() -> str:
    """The README's code map, from the declarations: stage, module, what it reads, what it writes, its config
    section (scripts/readme_tables.py writes it; tests/test_project.py keeps it in sync)."""
    import dataclasses

    from albert_exp.config import ExperimentConfig

    cfg = ExperimentConfig(corpus=dataclasses.replace(ExperimentConfig().corpus, toy=True))  # a toy: no files named
    rows = ["| stage | module | needs | reads | writes | config section |", "|---|---|---|---|---|---|"]
    for m in MODULES:
        s, path = m.STAGE, Path(m.__file__)
        module = f"albert_exp/{path.parent.name}/" if path.name == "__init__.py" else f"albert_exp/{path.name}"
        needs = ", ".join(f"`{n}`" for n in s.needs(cfg)) or "–"
        reads = ", ".join(f"`{n}`" for n in s.inputs(cfg)) or "–"
        if s.has_output:
            writes = f"`{s.output_link(cfg).relative_to(cfg.root)}@<identity>/`" + (" (resumable)" * s.resumable)
        else:
            writes = "its MLflow run (the run is the result)"
        extra = " (made on demand, no run)" if s.auto else ""
        rows.append(f"| `{s.name}`{extra} | `{module}` | {needs} | {reads} | {writes} | `{s.section}:` |")
    return "\n".join(rows) + "\n"
