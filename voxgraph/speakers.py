"""The speaker library as the request walk sees it: async, cached, safe to share.

`voxgraph.store.SpeakerStore` is the database (SQLite or PostgreSQL, one
SQLAlchemy path, synchronous). `SpeakerLibrary` runs it off the event loop and
caches the candidates per embedding model; the cache is checked against the
store's change counter at most every `refresh_s`, so every ingress replica sees
a new or deleted speaker within a second. No Ray import.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np

from voxgraph.errors import BadRequest, SpeakerNotFound
from voxgraph.identity import Candidate, VoiceprintStats
from voxgraph.store import Candidate as Enrolled
from voxgraph.store import Speaker, SpeakerStore


class SpeakerLibrary:
    """Enrolled speakers: enrol, list, delete, and the candidates that matching needs."""

    def __init__(self, url: str | None = None, refresh_s: float = 0.5):
        self._url = url
        self._store: SpeakerStore | None = None
        self._refresh_s = refresh_s
        self._cache: dict[str, list[Candidate]] = {}
        self._version: int | None = None
        self._checked = 0.0
        self._open_lock = asyncio.Lock()

    async def store(self) -> SpeakerStore:
        # Opened on first use: a service that never names anyone never touches a database.
        if self._store is None:
            async with self._open_lock:
                if self._store is None:
                    self._store = await asyncio.to_thread(SpeakerStore.open, self._url)
        return self._store

    async def enrol(
        self, name: str, model: str, prints: Sequence[np.ndarray], speech_s: Sequence[float]
    ) -> Speaker:
        store = await self.store()
        try:
            return await asyncio.to_thread(store.create, name, model, list(prints), list(speech_s))
        finally:
            self._forget()

    async def add_samples(
        self, speaker_id: str, model: str, prints: Sequence[np.ndarray], speech_s: Sequence[float]
    ) -> Speaker:
        store = await self.store()
        try:
            return await asyncio.to_thread(
                store.add_samples, speaker_id, model, list(prints), list(speech_s)
            )
        finally:
            self._forget()

    async def get(self, speaker_id: str) -> Speaker:
        store = await self.store()
        speaker = await asyncio.to_thread(store.get, speaker_id)
        if speaker is None:
            raise SpeakerNotFound(f"no enrolled speaker with id {speaker_id!r}")
        return speaker

    async def list(self) -> list[Speaker]:
        store = await self.store()
        return await asyncio.to_thread(store.list)

    async def delete(self, speaker_id: str) -> None:
        store = await self.store()
        try:
            deleted = await asyncio.to_thread(store.delete, speaker_id)
        finally:
            self._forget()
        if not deleted:
            raise SpeakerNotFound(f"no enrolled speaker with id {speaker_id!r}")

    async def candidates(self, model: str, names: Sequence[str] | None = None) -> list[Candidate]:
        """Enrolled voices for `model`: all of them, or those `names` select (400 if unknown).

        A speaker enrolled only with another embedding model is still a known name;
        matching then reports it as skipped rather than silently ignoring it.
        """
        store = await self.store()
        await self._refresh(store)
        if model not in self._cache:
            enrolled = await asyncio.to_thread(store.candidates, model)
            self._cache[model] = [_candidate(c) for c in enrolled]
        found = self._cache[model]
        if names is None:
            return list(found)
        enrolled = await asyncio.to_thread(store.find_by_names, names)
        unknown = [n for n in names if n not in enrolled]
        if unknown:
            raise BadRequest(
                f"no enrolled speaker named {', '.join(repr(n) for n in unknown)}; enrol them "
                "at /v1/speakers or send known_speaker_references[] with the names"
            )
        ids = {s.id for s in enrolled.values()}
        out = [c for c in found if c.id in ids]
        with_print = {c.id for c in out}
        for s in enrolled.values():
            if s.id not in with_print:
                # Enrolled with another model only: comparable to nothing this service makes.
                other = s.voiceprints[0].model if s.voiceprints else "none"
                out.append(Candidate(s.id, s.name, other, np.zeros(1), "library"))
        return out

    def _forget(self) -> None:
        # This replica's own write is seen by its next request; others within refresh_s.
        self._cache, self._version, self._checked = {}, None, 0.0

    async def _refresh(self, store: SpeakerStore) -> None:
        now = time.monotonic()
        if now - self._checked < self._refresh_s:
            return
        self._checked = now
        version = await asyncio.to_thread(store.version)
        if version != self._version:
            self._version, self._cache = version, {}

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _candidate(c: Enrolled) -> Candidate:
    stats = VoiceprintStats(c.clip_count, c.speech_seconds, c.cosine_mean, c.cosine_var)
    return Candidate(c.id, c.name, c.model, c.centroid, "library", stats)
