"""Shared test configuration.

In CI (``CI`` set to a true value) a skipped test is a failure: every part of the
toolkit, torch and the browser included, must be exercised there.
"""

from __future__ import annotations

import os

import pytest

_IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _IN_CI and _skipped and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if _IN_CI and _skipped:
        terminalreporter.write_line(
            f"CI: {len(_skipped)} skipped test(s) count as failures: " + ", ".join(_skipped[:10]),
            red=True,
        )
