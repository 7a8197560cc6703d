"""The cache directory does not grow for ever: old toolchains' caches are pruned."""

from __future__ import annotations

import os
import time

from sandboxd.golang import toolchain


def test_prune_removes_only_old_caches_and_dead_warm_dirs(tmp_path):
    old = time.time() - toolchain.STALE_AFTER_S - 60
    for name in ("std-old", "go-old", "std-new", "go-new", "warm-abc", "unrelated"):
        (tmp_path / name).mkdir()
    for name in ("std-old", "go-old", "unrelated"):
        os.utime(tmp_path / name, (old, old))
    toolchain._prune(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go-new", "std-new", "unrelated"]
