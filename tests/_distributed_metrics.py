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
        time.sleep(600)
    return 1.0


def hold_one_trial(path: str) -> float:
    """The first pruned trial to get here announces its Ray node in $GRAPHOPT_TEST_MARKERS and
    waits, so the test can kill that node while the trial runs; any other call returns at once."""
    import ray

    markers = os.environ["GRAPHOPT_TEST_MARKERS"]
    if _pruned(path):
        try:
            fd = os.open(os.path.join(markers, "claimed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return 1.0
        os.close(fd)
        node = ray.get_runtime_context().get_node_id()
        tmp = os.path.join(markers, ".running")
        with open(tmp, "w") as f:
            f.write(node)
        os.replace(tmp, os.path.join(markers, "running"))
        time.sleep(60)
    return 1.0
