"""When a caption stream is *busy*: :class:`BusySwitch`, the rule that picks its shorter buffer bounds.

A stream is busy while its recent compute per second of audio (over its last 10 updates, see
:attr:`~aiowhisper_npu.streaming.input.StreamLag.recent_compute_s_per_audio_s`) is above ``above``: it is
near to falling behind. The switch has hysteresis: once busy, it stays busy until the figure drops below
``release`` times ``above`` (0.6 by default), so a stream at the threshold does not flip its bounds at every
update.
"""

from __future__ import annotations

__all__ = ["BusySwitch"]


class BusySwitch:
    """The busy rule with hysteresis (see the module docstring).

    Args:
        above: compute seconds per audio second above which a stream becomes busy (> 0).
        release: the fraction of ``above`` below which a busy stream is busy no more (0 < release <= 1).
    """

    def __init__(self, above: float, release: float = 0.6) -> None:
        if not above > 0:
            raise ValueError(f"busy_above must be > 0, got {above!r}")
        if not 0 < release <= 1:
            raise ValueError(f"release must be in (0, 1], got {release!r}")
        self.above = float(above)
        self.release = float(release)
        self.busy = False

    def update(self, compute_s_per_audio_s: float) -> bool:
        """Take the newest recent compute per audio second; return (and keep in :attr:`busy`) whether the
        stream is busy now."""
        self.busy = compute_s_per_audio_s > (self.release if self.busy else 1.0) * self.above
        return self.busy
