"""User-facing errors: one clear line (where, what was wrong, what to do), exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or configuration. The CLI prints `error: <message>` and exits 2 (traceback with --debug).

    `where` is a location such as `data/train.csv:17` or `experiments/toy.yaml`; `fix` says what to do.
    """

    exit_code = 2

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(self.format())

    def format(self) -> str:
        msg = f"{self.where}: {self.what}" if self.where else self.what
        return f"{msg} ({self.fix})" if self.fix else msg


class ConfigError(UserError):
    """An unknown key or a bad value in an experiment YAML or an override."""
