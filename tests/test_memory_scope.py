"""A pass kept in memory (a read-only workspace could not store it) belongs to its workspace: another workspace's
model with the same id never reads it (found when a read-only test ran before the Overview's test)."""

from __future__ import annotations

import numpy as np

import nnlab.jobs.kinds as kinds
from nnlab.workspace import Workspace


def test_a_pass_kept_in_memory_is_read_only_by_its_own_workspace(tmp_path):
    a, b = Workspace(tmp_path / "a"), Workspace(tmp_path / "b")
    key = kinds.eval_key("demo-cnn-digits", "digits", "test")
    logits, labels = np.eye(3, dtype=np.float32), np.arange(3)
    with kinds._MEMORY_LOCK:
        kinds._MEMORY[(str(a.root), key)] = (logits, labels)
    try:
        got = kinds.load_evaluation(a, "demo-cnn-digits", "digits", "test")
        assert got is not None and got.accuracy == 1.0
        assert kinds.load_evaluation(b, "demo-cnn-digits", "digits", "test") is None
    finally:
        with kinds._MEMORY_LOCK:
            kinds._MEMORY.pop((str(a.root), key), None)
