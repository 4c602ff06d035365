"""Wall time per test module, printed at the end of every run (CI keeps the whole run under 75 minutes, and the
VM modules are what it spends them on). Loaded with ``-p module_times`` (pyproject's addopts)."""

from __future__ import annotations

from collections import defaultdict

import pytest

_seconds: dict[str, float] = defaultdict(float)
_tests: dict[str, int] = defaultdict(int)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = report.nodeid.split("::")[0]
    _seconds[module] += report.duration
    if report.when == "call":
        _tests[module] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _seconds:
        return
    terminalreporter.section("seconds per module (setup, call and teardown)")
    for module, seconds in sorted(_seconds.items(), key=lambda item: -item[1]):
        if seconds >= 1:
            terminalreporter.write_line(f"{seconds:8.1f}  {_tests[module]:4d} tests  {module}")
    terminalreporter.write_line(f"{sum(_seconds.values()):8.1f}  in all")
