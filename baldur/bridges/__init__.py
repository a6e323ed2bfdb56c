"""Sync ↔ async: per-thread loops for sync callers, one background loop per process."""

from baldur.bridges.faces import AsyncOverSync, SyncOverAsync
from baldur.bridges.loops import background, is_home_loop, loop_pool, run_sync

__all__ = ["AsyncOverSync", "SyncOverAsync", "background", "is_home_loop", "loop_pool", "run_sync"]
