"""--metric functions for tests/test_distributed.py (each takes a model path)."""

import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

TEST_SET = str(Path(__file__).resolve().parent.parent / "models" / "digits_test.npz")


def top1(path: str) -> float:
    """Top-1 accuracy on the held-out digits test set (297 labelled images)."""
    data = np.load(TEST_SET)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: data["input"]})[0]
    return float((logits.argmax(1) == data["label"]).mean())


def _pruned(path: str) -> bool:
    """clean,fuse leaves the digits CNN at ~118 KB; prune(ratio=0.5) at ~30 KB."""
    return os.path.getsize(path) < 90_000


def raise_if_pruned(path: str) -> float:
    if _pruned(path):
        raise ValueError("this metric refuses pruned models")
    return 1.0


def exit_if_pruned(path: str) -> float:
    if _pruned(path):
        os._exit(3)  # the worker process dies
    return 1.0


def sleep_if_pruned(path: str) -> float:
    if _pruned(path):
        time.sleep(120)
    return 1.0
