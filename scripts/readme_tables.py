"""Write the README's generated tables: the settings (from the config fields' help, albert_exp/config.py) and the
code map (from the stage declarations, albert_exp/stages.py).

    python scripts/readme_tables.py          # rewrites the blocks between the markers in README.md
    python scripts/readme_tables.py --check  # exit 1 if a table in the README differs from the code

tests/test_project.py runs the check, so neither table can go stale: after changing a setting or a stage, run this.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from albert_exp.config import settings_table  # noqa: E402


def _code_map() -> str:
    from albert_exp.stages import code_map

    return code_map()


# (start marker, end marker, the block's text)
BLOCKS = (
    (
        "<!-- settings: written by scripts/readme_tables.py from albert_exp/config.py; do not edit by hand -->",
        "<!-- /settings -->",
        settings_table,
    ),
    (
        "<!-- code map: written by scripts/readme_tables.py from albert_exp/stages.py; do not edit by hand -->",
        "<!-- /code map -->",
        _code_map,
    ),
)


def with_tables(readme: str) -> str:
    """The README with the block between each pair of markers replaced by the current table."""
    for start, end, make in BLOCKS:
        head, found, rest = readme.partition(start)
        _, found_end, tail = rest.partition(end)
        if not (found and found_end):
            raise SystemExit(f"README.md: the markers are missing ({start} ... {end})")
        readme = f"{head}{start}\n{make()}{end}{tail}"
    return readme


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check; exit 1 if README.md is stale")
    args = ap.parse_args()
    path = ROOT / "README.md"
    readme = path.read_text()
    new = with_tables(readme)
    if args.check:
        if new != readme:
            print("README.md: a generated table is stale: run `python scripts/readme_tables.py`")
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
