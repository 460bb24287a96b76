"""Moved to graphopt.instruments.stages; this old place stays while graphopt/analysis/__init__.py,
graphopt/report.py and tests/test_report.py import from it."""

from ..instruments.stages import StageProfiler, report_shapes  # noqa: F401
