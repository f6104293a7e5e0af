"""`python -m albert_exp <stage> ...`"""

from albert_exp.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
