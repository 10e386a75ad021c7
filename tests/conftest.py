"""Shared test helpers: run a flow in a thread, and wait on conditions instead of sleeping."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

import tideflow as tdf


def wait_until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


class FlowThread(threading.Thread):
    """Runs ``flow.run()`` off the main thread; ``.result`` or ``.error`` when done."""

    def __init__(self, flow: tdf.Flow, **run_options: object) -> None:
        super().__init__(daemon=True)
        self.flow = flow
        self.options = run_options
        self.result: tdf.RunResult | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.flow.run(handle_signals=False, **self.options)  # type: ignore[arg-type]
        except BaseException as error:
            self.error = error
