"""Realtime sessions through the real graph: Ray Serve's proxy, the Ingress, the tiny NeMo models.

Both the `openai` client's realtime connection and a plain WebSocket client
(`websockets`) speak to `/v1/realtime?intent=transcription`. The tiny models
are random, so what is checked is the protocol and the speakers' bookkeeping,
not the words (tests/test_realtime.py checks labels over known voices).
"""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest

from tests.conftest import speechlike

pytestmark = pytest.mark.integration

TURN_EVENTS = (
    "input_audio_buffer.committed",
    "conversation.item.input_audio_transcription.completed",
)


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def _speech(seconds: float, seed: int) -> np.ndarray:
    return speechlike(seconds, seed=seed).astype(np.float32)


async def _completed(recv, n: int, timeout_s: float = 120.0) -> list[dict]:
    """Events until the n-th `completed`."""
    seen: list[dict] = []
    done = 0

    async def loop():
        nonlocal done
        while done < n:
            ev = await recv()
            seen.append(ev)
            if ev["type"] == "conversation.item.input_audio_transcription.completed":
                done += 1
            assert ev["type"] != "error", ev

    await asyncio.wait_for(loop(), timeout_s)
    return seen


def test_openai_client_realtime_transcription_session(service):
    from openai import AsyncOpenAI

    async def go() -> list[dict]:
        client = AsyncOpenAI(base_url=f"{service.url}/v1", api_key="unused")
        async with client.realtime.connect(
            model="voxgraph", extra_query={"intent": "transcription"}
        ) as conn:
            first = await conn.recv()
            assert first.type == "session.created"
            await conn.session.update(
                session={
                    "type": "transcription",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": 24000},
                            "turn_detection": None,
                            "transcription": {"model": "parakeet", "language": "en"},
                        }
                    },
                }
            )
            updated = await conn.recv()
            assert updated.type == "session.updated"
            for seed in (1, 2):
                x = np.repeat(_speech(3.0, seed), 3)[::2]  # 16 kHz -> 24 kHz, roughly
                for i in range(0, len(x), 4800):
                    await conn.input_audio_buffer.append(
                        audio=base64.b64encode(_pcm16(x[i : i + 4800])).decode()
                    )
                await conn.input_audio_buffer.commit()

            async def recv():
                return (await conn.recv()).to_dict()

            return await _completed(recv, 2)

    events = asyncio.run(go())
    kinds = [e["type"] for e in events]
    assert kinds.count("input_audio_buffer.committed") == 2
    done = [e for e in events if e["type"].endswith(".completed")]
    committed = [e["item_id"] for e in events if e["type"] == "input_audio_buffer.committed"]
    assert [d["item_id"] for d in done] == committed
    for d in done:
        assert d["usage"]["type"] == "duration" and d["usage"]["seconds"] == pytest.approx(3.0)
        assert d["speaker"] is None or d["speaker"].startswith("Speaker_")


def test_plain_websocket_client_with_server_vad_and_bad_messages(service):
    import websockets

    url = service.url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"

    async def go() -> tuple[list[dict], list[dict]]:
        async with websockets.connect(url, open_timeout=30) as ws:
            created = json.loads(await ws.recv())
            assert created["type"] == "session.created"
            assert created["session"]["audio"]["input"]["format"]["rate"] == 24000
            await ws.send(
                json.dumps(
                    {
                        "type": "session.update",
                        "session": {
                            "audio": {
                                "input": {
                                    "format": {"type": "audio/pcm", "rate": 16000},
                                    "turn_detection": {
                                        "type": "server_vad",
                                        "silence_duration_ms": 700,
                                    },
                                }
                            }
                        },
                    }
                )
            )
            assert json.loads(await ws.recv())["type"] == "session.updated"
            # Bad messages: each gets an error event; the session carries on.
            for bad in ("{oops", json.dumps({"type": "nope"})):
                await ws.send(bad)
                err = json.loads(await ws.recv())
                assert err["type"] == "error" and err["error"]["message"]
            errors = [err]
            gap = np.zeros(16000, np.float32)
            x = np.concatenate([_speech(2.5, 2), gap, _speech(2.5, 3), gap])
            for i in range(0, len(x), 1600):
                await ws.send(
                    json.dumps(
                        {
                            "type": "input_audio_buffer.append",
                            "audio": base64.b64encode(_pcm16(x[i : i + 1600])).decode(),
                        }
                    )
                )

            async def recv():
                return json.loads(await ws.recv())

            return errors, await _completed(recv, 2)

    errors, events = asyncio.run(go())
    assert errors[0]["error"]["code"] == "invalid_event"
    kinds = [e["type"] for e in events]
    assert kinds.count("input_audio_buffer.speech_started") == 2
    assert kinds.count("input_audio_buffer.speech_stopped") == 2
    stops = [e for e in events if e["type"] == "input_audio_buffer.speech_stopped"]
    done = [e for e in events if e["type"].endswith(".completed")]
    assert [s["item_id"] for s in stops] == [d["item_id"] for d in done]
    # Speech stops inside each 2.5 s burst's last half second (bursts start at 0 s and 3.5 s).
    ends = [s["audio_end_ms"] / 1000 for s in stops]
    assert 2.0 <= ends[0] <= 2.5 and 5.5 <= ends[1] <= 6.0, ends
    segments = [e for e in events if e["type"].endswith(".segment")]
    for s in segments:
        assert s["speaker"].startswith("Speaker_") and 0 <= s["start"] <= s["end"] <= 7.1


def test_the_realtime_route_is_behind_the_api_key_and_reports_refusals(service):
    """The graph's ingress has no keys; a refused intent is a clear error, then close 1008."""
    import websockets

    url = service.url.replace("http://", "ws://") + "/v1/realtime?intent=conversation"

    async def go():
        async with websockets.connect(url, open_timeout=30) as ws:
            err = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            return err, closed.value.rcvd.code

    err, code = asyncio.run(go())
    assert err["error"]["code"] == "unsupported_intent" and code == 1008


def test_a_dead_ingress_replica_ends_its_sessions_with_a_retryable_close(service):
    """Kill the Ingress replica holding a session: the client is told at once, not left hanging."""
    import time

    import ray
    import websockets
    from ray import serve

    from tests.conftest import deploy_ingress_variant
    from tests.support import replica_actors

    name, prefix = "realtime-victim", "/realtime-victim"
    url = deploy_ingress_variant(service, name, prefix)
    try:
        ws_url = url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"

        async def go() -> tuple[int | None, float]:
            async with websockets.connect(ws_url, open_timeout=30) as ws:
                assert json.loads(await ws.recv())["type"] == "session.created"
                victim, _ = replica_actors(name)["Ingress"]
                killed = time.monotonic()
                ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
                try:
                    while True:
                        await asyncio.wait_for(ws.recv(), 60)
                except websockets.ConnectionClosed as e:
                    code = e.rcvd.code if e.rcvd is not None else None
                return code, time.monotonic() - killed

        code, after_s = asyncio.run(go())
    finally:
        serve.delete(name)
    # Serve's proxy ends the socket itself: 1011 (server error) or an abnormal close;
    # either way the client learns within seconds and reconnects.
    assert after_s < 30
    assert code in (None, 1006, 1011, 1012, 1013), code
