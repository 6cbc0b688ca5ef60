"""A "services" section in pytest's terminal summary: which broker, how fast it started."""

from __future__ import annotations

import pytest

_NOTES = pytest.StashKey[list[str]]()


def note(config: pytest.Config, line: str) -> None:
    """Record ``line`` for the summary printed at the end of the run."""
    config.stash.setdefault(_NOTES, []).append(line)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Print the recorded notes, if any."""
    notes = config.stash.get(_NOTES, [])
    if notes:
        terminalreporter.section("services")
        for line in notes:
            terminalreporter.write_line(line)
