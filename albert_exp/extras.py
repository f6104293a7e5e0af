"""Optional extras: what only some stages need is not part of the base install.

    pip install albert-exp                 # every stage on one machine, SQLite stores
    pip install 'albert-exp[ray]'          # pretraining-data --executor ray (scale-out)
    pip install 'albert-exp[tf]'           # convert, and TF / TF-Hub checkpoints as pretrain.init_from
    pip install 'albert-exp[postgres]'     # a PostgreSQL MLflow store or Optuna storage (team mode)

`make install` (and so `make demo` / `make test`) installs all of them. A stage that needs a missing extra stops
with one line naming it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from albert_exp.errors import UserError

# extra -> the module it provides (pyproject.toml [project.optional-dependencies] pins the packages)
EXTRAS = {"ray": "ray", "tf": "tensorflow", "postgres": "psycopg"}


def require(extra: str, what: str) -> ModuleType:
    """The module of an optional extra, imported; or a UserError saying `what` needs the extra and how to get it."""
    try:
        return importlib.import_module(EXTRAS[extra])
    except ImportError:
        raise UserError(
            f"{what} needs the `{extra}` extra, which is not installed", fix=f"pip install 'albert-exp[{extra}]'"
        ) from None
