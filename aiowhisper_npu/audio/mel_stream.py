"""Incremental log-mel for streaming: each pushed sample completes at most a few STFT frames.

:class:`IncrementalLogMel` builds one 30 s window. Frame ``t`` is centred on window sample ``t * 160`` and
reads samples ``t*160 - 200 .. t*160 + 199``; at the window's left edge those are reflected
(``x[-k] = x[k]``), and frame 2999 reads the reflection of the window's last 200 samples. A frame is *final*
once every sample it reads is known; :meth:`~IncrementalLogMel.push` computes exactly the frames that its
samples make final, once each, into a ``(3000, 201)`` power array. :meth:`~IncrementalLogMel.snapshot`
computes the not-yet-final frames freshly (never cached) as if the window were zero-padded now, and
:meth:`~IncrementalLogMel.finish` pads with zeros for good. Both finish with
:func:`~aiowhisper_npu.audio.mel.normalize_window` on the same ``(3000, 201)`` shape as the offline path, so
``finish()`` is bit-identical to ``log_mel_windows(audio)[i]`` for any chunking.

:class:`LogMelStream` chains windows: ``push`` returns the log-mels of the windows it completed.
"""

from __future__ import annotations

import numpy as np

from .io import HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, validate_audio
from .mel import N_FREQS, frames_power, mel_filters, normalize_window

__all__ = ["IncrementalLogMel", "LogMelStream"]

_PAD = N_FFT // 2  # 200: centre padding; window sample i lives at buffer index i + _PAD


class IncrementalLogMel:
    """Log-mel of one 30 s window, fed by :meth:`push` in chunks of any size.

    Counters: :attr:`frames_computed` counts final frames (each computed exactly once, 3000 per window);
    :attr:`provisional_frames_computed` counts the boundary frames recomputed by :meth:`snapshot`.
    """

    def __init__(self, n_mels: int = 80) -> None:
        mel_filters(n_mels)  # reject a bad n_mels now, not at the first snapshot
        self.n_mels = n_mels
        self._buf = np.zeros(N_SAMPLES + 2 * _PAD, dtype=np.float32)  # reflect-padded window, zeros ahead
        self._power = np.zeros((N_FRAMES, N_FREQS), dtype=np.float32)  # rows [0, _done) are final
        self._n = 0  # window samples received
        self._done = 0  # final frames cached
        self._result: np.ndarray | None = None
        self.frames_computed = 0
        self.provisional_frames_computed = 0

    @property
    def n_samples(self) -> int:
        """Samples received in this window so far (0 .. 480000)."""
        return self._n

    @property
    def is_full(self) -> bool:
        """True once the window holds all 480000 samples (every frame is then final)."""
        return self._n == N_SAMPLES

    @property
    def frames_final(self) -> int:
        """Frames whose power is final and cached."""
        return self._done

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Append samples; compute the frames they make final. Returns the samples beyond this window.

        ``samples`` is 1-D float audio (checked by :func:`~aiowhisper_npu.audio.io.validate_audio`); an empty
        chunk is a no-op. The returned leftover (empty unless the window filled up) belongs to the next
        window -- :class:`LogMelStream` handles that rollover.
        """
        if self._result is not None:
            raise RuntimeError("this window is finished; start a new IncrementalLogMel")
        if np.ndim(samples) == 1 and np.size(samples) == 0:
            return np.zeros(0, dtype=np.float32)
        x = validate_audio(samples, name="samples")
        take = min(x.size, N_SAMPLES - self._n)
        old, self._n = self._n, self._n + take
        self._buf[_PAD + old : _PAD + self._n] = x[:take]
        if old <= _PAD:  # samples 1..200 changed: refresh the left reflection
            self._buf[:_PAD] = self._buf[2 * _PAD : _PAD : -1]
        if self.is_full:
            self._reflect_right()
        self._compute_final(self._final_count(self._n))
        return x[take:]

    def snapshot(self) -> np.ndarray:
        """Log-mel ``(n_mels, 3000)`` of the samples so far, zero-padded to 30 s; caches nothing new.

        Equals ``log_mel_windows(samples_so_far)[0]`` bit for bit. Costs the few not-yet-final frames that
        touch received samples plus one projection; frames over the zero padding are exact zeros.
        """
        if self._result is not None:
            return self._result.copy()
        power = self._power.copy()
        stop = self._touched()
        if stop > self._done:
            self._reflect_right()  # frame 2999 reads the reflection of whatever the window end holds now
            power[self._done : stop] = frames_power(self._frames(self._done, stop))
            self.provisional_frames_computed += stop - self._done
        return normalize_window(power, self.n_mels)

    def finish(self) -> np.ndarray:
        """Zero-pad the window to 30 s for good and return its final log-mel ``(n_mels, 3000)`` float32."""
        if self._result is None:
            self._reflect_right()
            self._compute_final(self._touched())  # the rest lies over zero padding: power 0, already there
            self._done = N_FRAMES
            self._result = normalize_window(self._power, self.n_mels)
        return self._result.copy()

    # ------------------------------------------------------------------------------------------- internals

    @staticmethod
    def _final_count(n: int) -> int:
        """Frames fully determined by ``n`` received samples: frame t needs ``t*160 + 200`` (frame 0: 201)."""
        if n == N_SAMPLES:
            return N_FRAMES  # frame 2999 reads the reflected window end, known only now
        return 0 if n <= _PAD else (n - _PAD) // HOP_LENGTH + 1

    def _touched(self) -> int:
        """One past the last frame that reads a received sample (later frames read only zeros)."""
        return min(N_FRAMES, -(-(self._n + _PAD) // HOP_LENGTH))

    def _frames(self, start: int, stop: int) -> np.ndarray:
        """Raw 400-sample frames ``start .. stop-1`` as a strided view of the padded buffer."""
        view = np.lib.stride_tricks.sliding_window_view(self._buf, N_FFT)[::HOP_LENGTH]
        return view[start:stop]

    def _compute_final(self, count: int) -> None:
        if count > self._done:
            self._power[self._done : count] = frames_power(self._frames(self._done, count))
            self.frames_computed += count - self._done
            self._done = count

    def _reflect_right(self) -> None:
        """Buffer index ``N + 199 + k`` mirrors window sample ``N - 1 - k`` (k = 1..200)."""
        end = _PAD + N_SAMPLES
        self._buf[end:] = self._buf[end - 2 : end - 2 - _PAD : -1]


class LogMelStream:
    """A stream of consecutive 30 s windows, each an :class:`IncrementalLogMel`.

    ``push`` returns the final log-mels of the windows completed by the pushed samples (in order);
    ``snapshot`` gives the partial current window; ``finish`` closes the last window. Window ``i`` equals
    ``log_mel_windows(all_audio)[i]`` bit for bit.
    """

    def __init__(self, n_mels: int = 80) -> None:
        self.n_mels = n_mels
        self.window_index = 0  # index of the window being filled
        self.current = IncrementalLogMel(n_mels)
        self._frames_before = 0
        self._provisional_before = 0

    @property
    def frames_computed(self) -> int:
        """Final frames computed over the whole stream (3000 per completed window)."""
        return self._frames_before + self.current.frames_computed

    @property
    def provisional_frames_computed(self) -> int:
        """Frames recomputed by snapshots over the whole stream."""
        return self._provisional_before + self.current.provisional_frames_computed

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        """Append samples; return the ``(n_mels, 3000)`` log-mel of every window they completed."""
        completed: list[np.ndarray] = []
        rest = samples
        while True:
            rest = self.current.push(rest)
            if self.current.is_full:
                completed.append(self.current.finish())
                self._roll()
            if rest.size == 0:
                return completed

    def snapshot(self) -> np.ndarray | None:
        """Provisional log-mel of the current window, or None if it holds no samples yet."""
        return self.current.snapshot() if self.current.n_samples else None

    def finish(self) -> np.ndarray | None:
        """Final log-mel of the last, partial window; None if it is empty (length a multiple of 30 s)."""
        if self.current.n_samples == 0:
            return None
        out = self.current.finish()
        self._roll()
        return out

    def _roll(self) -> None:
        self._frames_before += self.current.frames_computed
        self._provisional_before += self.current.provisional_frames_computed
        self.current = IncrementalLogMel(self.n_mels)
        self.window_index += 1
