"""A budget of decoded audio held at once, so a burst of long uploads gets 503s, not OOM.

Request queues count requests, not bytes: 64 requests of 4 hours each would be
~60 GB of float32 samples. The ingress reserves each request's decoded seconds
here for the request's lifetime and refuses what does not fit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from voxgraph.errors import ServiceUnavailable


class AudioBudget:
    """Seconds of decoded audio in flight; one event loop uses it (no lock needed)."""

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self.in_use_s = 0.0

    @contextmanager
    def hold(self, seconds: float) -> Iterator[None]:
        if self.in_use_s > 0 and self.in_use_s + seconds > self.limit_s:
            # An idle service always admits one request, whatever its length, so
            # nothing within max_audio_s can be refused forever.
            raise ServiceUnavailable(
                f"the service is busy with {self.in_use_s / 3600:.1f} h of audio "
                f"(limit {self.limit_s / 3600:.1f} h in flight); retry shortly",
                retry_after_s=5,
            )
        self.in_use_s += seconds
        try:
            yield
        finally:
            self.in_use_s -= seconds
