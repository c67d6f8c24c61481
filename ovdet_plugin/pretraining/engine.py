"""Moved to :mod:`ovdet_plugin.engine.pretrain` (kept as an import path)."""

from ..engine.pretrain import *  # noqa: F401,F403
