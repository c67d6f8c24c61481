"""Moved to :mod:`ovdet_plugin.engine.train_loop` (kept as an import path)."""

from ..engine.train_loop import *  # noqa: F401,F403
