"""The Dialogue record: two time-aligned mono tracks at 24 kHz plus optional word timings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from duplexgym.constants import SAMPLE_RATE

#: Speaker labels; ``A`` is channel 0 / ``track_a``, ``B`` is channel 1 / ``track_b``.
SPEAKERS = ("A", "B")


def other_speaker(speaker: str) -> str:
    """The other speaker's label (``"A"`` <-> ``"B"``)."""
    return "B" if speaker == "A" else "A"


@dataclass(frozen=True)
class Word:
    """One timed word of a transcript. Times in dialogue seconds."""

    speaker: str
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Dialogue:
    """Two time-aligned speaker tracks.

    ``tracks``: float32 array ``[2, N]`` at :data:`SAMPLE_RATE` Hz, row 0 = speaker A,
    row 1 = speaker B, values in [-1, 1]. ``words``: the timed transcript, or ``None`` when
    unknown. ``source``: the file(s) it came from, for error messages.
    """

    id: str
    tracks: np.ndarray
    words: tuple[Word, ...] | None
    source: str

    @property
    def duration_s(self) -> float:
        return self.tracks.shape[1] / SAMPLE_RATE

    def track(self, speaker: str) -> np.ndarray:
        """The ``[N]`` float32 track of ``speaker`` (``"A"`` or ``"B"``)."""
        return self.tracks[SPEAKERS.index(speaker)]
