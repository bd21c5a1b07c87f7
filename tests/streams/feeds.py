"""A paced replay that a test can hold at a point of its stream until something happened.

A test that needs events still arriving after a moment it does not control (a kill, a
rollback) cannot count on the clock: on a slow machine the feed may end first. The feed
here sends its first ``hold_at`` rows at its pace, waits there until the test releases
it, then sends the rest at the same pace (a resumed replay: labels and pacing continue
where the first part stopped). Released before it gets there, it never stops.
"""

from __future__ import annotations

import threading

import pandas as pd

from streams.replay.dataset import Dataset
from streams.replay.producer import ReplayOptions, replay
from streams.settings import Settings


class HeldReplay(threading.Thread):
    """Replays ``frame`` at ``speed`` (times real time; None: at the maximum rate), held at row
    ``hold_at`` until :attr:`release` is set; :meth:`finish` re-raises what it raised."""

    def __init__(self, frame: pd.DataFrame, kafka: str, settings: Settings, *,
                 speed: float | None, hold_at: int, hold_timeout_s: float = 600.0) -> None:
        super().__init__(daemon=True)
        self.dataset = Dataset.from_frame(frame)
        self.kafka, self.settings = kafka, settings
        self.speed, self.hold_at, self.hold_timeout_s = speed, hold_at, hold_timeout_s
        self.release = threading.Event()
        self.held = threading.Event()
        self.finished = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            first = replay(self.dataset, self.kafka, self.settings, ReplayOptions(
                progress=False, speed=self.speed, limit=self.hold_at))
            assert first.next_row == self.hold_at, first
            self.held.set()
            if not self.release.wait(self.hold_timeout_s):
                raise TimeoutError(f"held at row {self.hold_at} for "
                                   f"{self.hold_timeout_s:.0f} s: never released")
            rest = replay(self.dataset, self.kafka, self.settings, ReplayOptions(
                progress=False, speed=self.speed, resume=True))
            assert rest.finished and rest.start_row == self.hold_at, rest
        except BaseException as exc:  # noqa: BLE001 - re-raised by finish()
            self.error = exc
        finally:
            self.finished.set()

    def finish(self, timeout_s: float = 300.0) -> None:
        """Release the feed, wait for its end and raise what it raised."""
        self.release.set()
        self.join(timeout_s)
        if self.error is not None:
            raise AssertionError(f"the feed failed: {self.error!r}") from self.error
        assert not self.is_alive(), f"the feed did not end in {timeout_s:.0f} s"
