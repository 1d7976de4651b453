"""The service's live endpoint (/v1/live) and pipelines/live_client.py: speech streamed in, frames back with their
latencies; bad starts and malformed chunks get one sentence; a client that goes away frees its session.

A tiny live model (configs/stage1.py:tiny_live) beside a tiny stage-2 model, tiny random renderer weights.
"""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from playmate_jax import video
from pipelines import live_client
from tests.test_serve import build, listening
from tests import videos


@pytest.fixture(scope="module")
def media(tmp_path_factory):
  folder = tmp_path_factory.mktemp("live_media")
  videos.write_photos(folder, ".jpg")
  sf.write(folder / "speech.flac", videos.tone_bursts(2.2, 22050, freq=170), 22050)
  return folder


@pytest.fixture(scope="module")
def served(stage2_run, live_run, tmp_path_factory):
  app, service = build(stage2_run, tmp_path_factory.mktemp("live_results"), live_checkpoint=live_run, max_live=2)
  assert service.ready.wait(300) and service.failure is None
  with listening(app) as port:
    yield app, service, f"ws://127.0.0.1:{port}/v1/live"
  service.stop()


def start(media, **extra):
  image = base64.b64encode((media / extra.pop("image", "portrait.jpg")).read_bytes()).decode()
  return json.dumps(dict(image=image, rate=16000, **extra))


def test_the_client_streams_speech_at_real_time_pace_and_gets_every_frame(served, media, tmp_path):
  _, service, url = served
  out, report = tmp_path / "live.mp4", tmp_path / "live.json"
  code = live_client.main(["--url", url, "--image", str(media / "portrait.jpg"), "--audio",
                           str(media / "speech.flac"), "--out", str(out), "--report", str(report)])
  assert code == 0
  info = video.probe(out)
  assert info.num_frames == 55 and info.has_audio           # 2.2 s at 25 fps, every frame back
  r = json.loads(report.read_text())
  assert r["frames"] == 55 and [f["index"] for f in r["per_frame"]] == list(range(55))
  assert r["window"] == 8 and r["lookahead"] == 2
  # real-time pace: a frame can't come back before its window's audio (to its last frame + 2) was sent
  for row in r["per_frame"]:
    window_end = (row["index"] // 8 + 1) * 8 + 2
    assert row["received_s"] >= min(window_end, 55) / 25 - 0.05
  assert r["latency_ms"]["median"] > 0 and r["server_latency_ms"]["p95"] >= r["server_latency_ms"]["median"]
  assert r["wall_s"] >= 2.1                                  # sent as spoken
  assert service.live_sessions == 0


def test_fast_streaming_and_chunks_of_any_size(served, media, tmp_path):
  _, _, url = served
  out = tmp_path / "fast.mp4"
  assert live_client.main(["--url", url, "--image", str(media / "portrait.jpg"), "--audio",
                           str(media / "speech.flac"), "--out", str(out), "--fast", "--chunk-ms", "7"]) == 0
  assert video.probe(out).num_frames == 55


def test_bad_starts_and_malformed_chunks_are_one_sentence_and_free_the_session(served, media):
  app, service, _ = served
  client = TestClient(app)
  with client.websocket_connect("/v1/live") as ws:
    ws.send_text("not json")
    said = ws.receive_json()
    assert said["type"] == "error" and "first message must be JSON" in said["error"]
  with client.websocket_connect("/v1/live") as ws:
    ws.send_text(start(media, image="cat.jpg"))
    said = ws.receive_json()
    assert said["type"] == "error" and said["error"].startswith("No human face was found in the portrait")
  with client.websocket_connect("/v1/live") as ws:
    ws.send_text(start(media, emotion="happy"))
    assert "no emotion control" in ws.receive_json()["error"]
  with client.websocket_connect("/v1/live") as ws:
    ws.send_text(start(media))
    assert ws.receive_json()["type"] == "ready"
    ws.send_bytes(b"\x00\x01\x02")
    said = ws.receive_json()
    assert said["type"] == "error" and "not 16-bit PCM" in said["error"]
  with client.websocket_connect("/v1/live") as ws:
    ws.send_text(start(media))
    assert ws.receive_json()["type"] == "ready"
    ws.send_bytes(np.zeros(16000, "<i2").tobytes())
    header = ws.receive_bytes()[:8]
    assert int.from_bytes(header[:4], "big") == 0
    assert service.live_sessions == 1
  deadline = time.monotonic() + 10     # the client went away mid-stream: its session is freed
  while service.live_sessions and time.monotonic() < deadline:
    time.sleep(0.05)
  assert service.live_sessions == 0
