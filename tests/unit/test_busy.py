"""The caption stream's busy rule (:class:`~aiowhisper_npu.streaming.busy.BusySwitch`, with hysteresis) and the
recent compute figure it reads (:meth:`~aiowhisper_npu.streaming.input.StreamInput.recent_compute_s_per_audio_s`)."""

from __future__ import annotations

from typing import Any

import pytest

from aiowhisper_npu.streaming.busy import BusySwitch
from aiowhisper_npu.streaming.input import StreamInput


def _no_background(fn: Any, name: str) -> None:
    raise AssertionError("not started")


class Meter:
    """A stream input that only records updates: ``compute_s`` per update of ``samples`` new audio."""

    def __init__(self) -> None:
        self.input = StreamInput([], background=_no_background)
        self.end = 0

    def updates(self, compute_s: float, samples: int, n: int = 10) -> float:
        for _ in range(n):
            self.end += samples
            self.input.record(compute_s, self.end, final=False, skipped=0)
        return self.input.recent_compute_s_per_audio_s()


def test_busy_above_the_threshold_and_left_below_its_release() -> None:
    """The stream's sequence: busy when the last 10 updates' compute per audio second exceeds ``above``
    (0.9), not busy again until it falls below 0.6 of it (0.54)."""
    meter, switch = Meter(), BusySwitch(0.9)
    assert meter.input.recent_compute_s_per_audio_s() == 0.0 and not switch.busy  # before any update
    assert meter.updates(0.4, 8000) == pytest.approx(0.8)  # 0.8 s of compute per audio second: not busy yet
    assert not switch.update(meter.input.recent_compute_s_per_audio_s())
    assert meter.updates(0.5, 8000) == pytest.approx(1.0)  # 1.0: busy
    assert switch.update(meter.input.recent_compute_s_per_audio_s()) and switch.busy
    assert meter.updates(0.3, 8000) == pytest.approx(0.6)  # 0.6: still busy (left below 0.6 * 0.9 = 0.54)
    assert switch.update(meter.input.recent_compute_s_per_audio_s())
    assert meter.updates(0.25, 8000) == pytest.approx(0.5)
    assert not switch.update(meter.input.recent_compute_s_per_audio_s()) and not switch.busy


def test_the_recent_figure_covers_the_last_ten_updates() -> None:
    meter = Meter()
    meter.updates(5.0, 8000, n=3)
    assert meter.updates(0.1, 16000) == pytest.approx(0.1)  # the three slow updates have left the window
    lag = meter.input.lag
    assert lag.updates == 13 and lag.updated_s == pytest.approx(3 * 0.5 + 10 * 1.0)


def test_the_switch_at_its_bounds() -> None:
    switch = BusySwitch(1.0, release=1.0)  # no hysteresis
    assert not switch.update(1.0) and switch.update(1.01) and not switch.update(1.0)
    switch = BusySwitch(0.9)
    assert not switch.update(0.9)  # strictly above
    assert switch.update(0.91) and switch.update(0.541) and not switch.update(0.54)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="busy_above"):
            BusySwitch(bad)
    with pytest.raises(ValueError, match="release"):
        BusySwitch(0.9, release=0.0)
