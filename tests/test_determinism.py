"""Determinism of `quant` (issue 13, point 5): the same model, spec, seed and machine give
the same verdict and the same bytes every run, also when the machine is busy."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from graphopt.passes import _timing

from conftest import MODELS

CLI = [sys.executable, "-c", "import sys; from graphopt.cli import main; sys.exit(main())"]


def test_median_interval_is_the_binomial_order_statistic_interval():
    v = list(range(1, 42))  # 41 values: the 99% interval of the median is [v(12), v(30)] (1-based)
    med, lo, hi = _timing.median_interval(v)
    assert med == 21 and (lo, hi) == (12, 30)  # P(Binomial(41, 1/2) <= 11) = 0.002 <= 0.005 < P(<= 12)
    med, lo, hi = _timing.median_interval([3.0, 1.0, 2.0])  # too few for 99%: the full range
    assert (med, lo, hi) == (2.0, 1.0, 3.0)
    # coverage: on noisy ratios around 1.2 the interval holds 1.2 in >= 98% of draws
    rng = np.random.default_rng(0)
    hits = sum(lo <= 1.2 <= hi for med, lo, hi in
               (_timing.median_interval(list(1.2 + rng.standard_t(3, 41) * 0.1)) for _ in range(500)))
    assert hits >= 490


def test_verdict_needs_the_whole_interval():
    s = _timing.Speedup(1.3, 1.06, 1.5, 41, 1.0, 0.77)
    assert s.verdict(1.05) == "faster" and s.verdict(1.1) == "inconclusive" and s.verdict(1.6) == "slower"


def _spinners(n=2):
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


@pytest.mark.slow
def test_headline_command_is_deterministic_on_a_busy_machine(tmp_path):
    """`graphopt models/digits_cnn.onnx -p fuse,quant` (no samples): exit 0 and the same
    output bytes in 20 consecutive runs while two busy loops keep both cores occupied."""
    spin = _spinners(2)
    digests, logs = set(), []
    try:
        for i in range(20):
            out = tmp_path / f"out{i}.onnx"
            # a fresh timing cache every run: the verdict must hold without quant's cache
            r = subprocess.run(CLI + [str(MODELS / "digits_cnn.onnx"), "-p", "fuse,quant", "-o", str(out)],
                               capture_output=True, text=True, timeout=300, cwd=tmp_path,
                               env={**os.environ, "NO_COLOR": "1", "GRAPHOPT_CACHE_DIR": str(tmp_path / f"c{i}")})
            assert r.returncode == 0, r.stderr[-2000:]
            digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
            logs.append(r.stderr)
    finally:
        for p in spin:
            p.kill()
            p.wait()
    assert len(digests) == 1, f"{len(digests)} different outputs in 20 runs"
    # the mode and the reason are said once per run, in one line each
    assert all(e.count("no samples: dynamic INT8") == 1 for e in logs), logs[0]
    assert not (tmp_path / "graphopt-repro").exists()
