"""The tracking boundary (albert_exp/tracking/runs.py until it is split by job)."""

from albert_exp.tracking.runs import *  # noqa: F403
