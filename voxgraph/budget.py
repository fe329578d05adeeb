"""A budget of decoded audio held at once, so a burst of long uploads gets 503s, not OOM.

Request queues count requests, not bytes: 64 requests of 4 hours each would be
~60 GB of float32 samples. Each request reserves its audio seconds here before
it decodes (from what the file declares, or a bound from its size), corrects the
reservation to the decoded length, and releases it when it ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from voxgraph.errors import ServiceUnavailable


class Reservation:
    """Seconds held by one request; `resize` corrects an estimate once it is known."""

    def __init__(self, budget: AudioBudget, seconds: float):
        self._budget = budget
        self.seconds = seconds

    def resize(self, seconds: float) -> None:
        # Growing past the estimate is allowed: the decoder already holds those
        # samples, and refusing now would waste the work without freeing memory.
        self._budget.in_use_s += seconds - self.seconds
        self.seconds = seconds


class AudioBudget:
    """Seconds of decoded audio in flight; one event loop uses it (no lock needed)."""

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self.in_use_s = 0.0

    @contextmanager
    def reserve(self, seconds: float) -> Iterator[Reservation]:
        if self.in_use_s > 0 and self.in_use_s + seconds > self.limit_s:
            # An idle service always admits one request, whatever its length, so
            # nothing within max_audio_s can be refused forever.
            raise ServiceUnavailable(
                f"the service is busy with {self.in_use_s / 3600:.1f} h of audio "
                f"(limit {self.limit_s / 3600:.1f} h in flight); retry shortly",
                retry_after_s=5,
            )
        held = Reservation(self, seconds)
        self.in_use_s += seconds
        try:
            yield held
        finally:
            self.in_use_s -= held.seconds
