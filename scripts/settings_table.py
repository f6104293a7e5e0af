"""Write the README's table of settings from the config fields' help (albert_exp/config.py).

    python scripts/settings_table.py          # rewrites the block between the markers in README.md
    python scripts/settings_table.py --check  # exit 1 if the README's table differs from the code

tests/test_project.py runs the check, so the table cannot go stale: after changing a setting, run this.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from albert_exp.config import settings_table  # noqa: E402

START = "<!-- settings: written by scripts/settings_table.py from albert_exp/config.py; do not edit by hand -->"
END = "<!-- /settings -->"


def with_table(readme: str) -> str:
    """The README with the block between the markers replaced by the current table."""
    head, found, rest = readme.partition(START)
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise SystemExit(f"README.md: the markers are missing ({START} ... {END})")
    return f"{head}{START}\n{settings_table()}{END}{tail}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check; exit 1 if README.md is stale")
    args = ap.parse_args()
    path = ROOT / "README.md"
    readme = path.read_text()
    new = with_table(readme)
    if args.check:
        if new != readme:
            print("README.md: the table of settings is stale: run `python scripts/settings_table.py`")
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
