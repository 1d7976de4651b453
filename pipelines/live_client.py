"""Streams speech to a service's live endpoint and records what comes back.

  python pipelines/live_client.py --url ws://HOST:PORT/v1/live --image PORTRAIT --audio SPEECH
                                  --out OUT.mp4 [--report TIMINGS.json] [--fast] [--emotion NAME] [--token TOKEN]
                                  [--chunk-ms 20]

The speech (any file the project reads) is sent as 16-bit PCM at 16 kHz in chunks of --chunk-ms, at real-time pace
(as a microphone would), or as fast as the service takes it with --fast. The frames that come back are written as a
25 fps video with the sound. The report gives each frame's latency, from sending the chunk that held the last
sample of the frame's audio to receiving the frame (and the service's own figure, from that chunk's arrival to the
frame's sending), with the median, 95th percentile and maximum, and the first and last tenth's medians (a delay
that grows shows there).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from playmate_jax import cli  # noqa: E402
from playmate_jax.errors import UserError  # noqa: E402

RATE = 16000


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--url", required=True, help="the service's live endpoint, ws://HOST:PORT/v1/live")
  p.add_argument("--image", required=True, help="the portrait")
  p.add_argument("--audio", required=True, help="the speech (wav, mp3, m4a, ..., or a video's sound)")
  p.add_argument("--out", required=True, help="the video written from the frames received, with the sound")
  p.add_argument("--report", default=None, help="per-frame latencies and their summary (JSON)")
  p.add_argument("--fast", action="store_true", help="send as fast as the service takes it, not at real-time pace")
  p.add_argument("--emotion", default=None, help="stage-2 live model: the emotion")
  p.add_argument("--token", default=os.environ.get("PLAYMATE_TOKEN"), help="the service's token")
  p.add_argument("--chunk-ms", type=float, default=20.0, help="audio per message, in milliseconds")
  return p.parse_args(argv)


def percentile(values: list[float], q: float) -> float:
  ordered = sorted(values)
  return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))]


def summary(values: list[float]) -> dict:
  if not values:
    return {}
  tenth = max(1, len(values) // 10)
  return dict(median=statistics.median(values), p95=percentile(values, 95), max=max(values),
              first_tenth_median=statistics.median(values[:tenth]), last_tenth_median=statistics.median(values[-tenth:]))


async def stream(args: argparse.Namespace, wave) -> dict:
  import numpy as np
  import websockets

  pcm = (np.clip(wave, -1, 1) * 32767).astype("<i2")
  chunk = max(1, int(RATE * args.chunk_ms / 1000))
  with open(args.image, "rb") as f:
    image = base64.b64encode(f.read()).decode()
  start = dict(image=image, rate=RATE, emotion=args.emotion)
  headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
  try:
    ws = await websockets.connect(args.url, max_size=None, additional_headers=headers)
  except (OSError, websockets.exceptions.InvalidURI, websockets.exceptions.InvalidHandshake) as e:
    raise UserError(f"Could not connect to {args.url} ({e}); check that pipelines/serve.py runs there.") from None
  sent: list[tuple[int, float]] = []     # (samples sent, when)
  frames: dict[int, tuple[bytes, float, float]] = {}
  async with ws:
    await ws.send(json.dumps(start))
    ready = json.loads(await ws.recv())
    if ready.get("type") == "error":
      raise UserError(f"The service refused the session: {ready['error']}")
    t0 = time.perf_counter()

    async def send():
      for n in range(0, len(pcm), chunk):
        if not args.fast:
          await asyncio.sleep(max(0.0, t0 + n / RATE - time.perf_counter()))
        part = pcm[n:n + chunk]
        await ws.send(part.tobytes())
        sent.append((n + len(part), time.perf_counter()))
      await ws.send(json.dumps({"type": "end"}))

    async def receive():
      while True:
        message = await ws.recv()
        now = time.perf_counter()
        if isinstance(message, bytes):
          index, server_ms = struct.unpack(">If", message[:8])
          frames[index] = (message[8:], server_ms, now)
          continue
        said = json.loads(message)
        if said.get("type") == "error":
          raise UserError(f"The service stopped the session: {said['error']}")
        if said.get("type") == "end":
          return said

    sender = asyncio.create_task(send())
    try:
      end = await receive()
    finally:
      sender.cancel()
  hop = RATE // 25
  rows = []
  for index in sorted(frames):
    _, server_ms, received = frames[index]
    last_sample = min((index + 1) * hop, len(pcm))
    sent_at = next((t for n, t in sent if n >= last_sample), sent[-1][1])
    rows.append(dict(index=index, latency_ms=(received - sent_at) * 1e3, server_latency_ms=server_ms,
                     received_s=received - t0))
  return dict(ready=ready, end=end, frames=frames, rows=rows, wall_s=time.perf_counter() - t0)


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  cli.setup_logging("WARNING")

  def run():
    import cv2
    import numpy as np

    from playmate_jax.audio import load_audio
    from playmate_jax.video import VideoWriter

    cli.check_output_folder(args.out)
    if args.report:
      cli.check_output_folder(args.report, "--report")
    if not os.path.isfile(args.image):
      raise UserError(f"Portrait {args.image} does not exist; check the path.")
    wave = load_audio(args.audio)
    result = asyncio.run(stream(args, wave))
    frames, rows = result["frames"], result["rows"]
    if not frames:
      raise UserError(f"The service sent no frames for {args.audio}; its speech may be shorter than one frame.")
    with VideoWriter(args.out, fps=25, audio=wave, num_frames=len(frames)) as writer:
      for index in sorted(frames):
        image = cv2.imdecode(np.frombuffer(frames[index][0], np.uint8), cv2.IMREAD_COLOR)
        writer.write(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    latency = [r["latency_ms"] for r in rows]
    report = dict(url=args.url, audio=args.audio, audio_seconds=len(wave) / RATE, frames=len(frames),
                  fast=args.fast, chunk_ms=args.chunk_ms, wall_s=result["wall_s"], window=result["ready"]["window"],
                  lookahead=result["ready"]["lookahead"], latency_ms=summary(latency),
                  server_latency_ms=summary([r["server_latency_ms"] for r in rows]), per_frame=rows)
    if args.report:
      cli.write_text(args.report, json.dumps(report, indent=1))
    s = report["latency_ms"]
    print(f"wrote {args.out}: {len(frames)} frames for {report['audio_seconds']:.2f} s of speech in "
          f"{result['wall_s']:.2f} s; latency median {s['median']:.0f} ms, 95th percentile {s['p95']:.0f} ms, max "
          f"{s['max']:.0f} ms (first tenth {s['first_tenth_median']:.0f}, last tenth {s['last_tenth_median']:.0f})"
          + (f"; report in {args.report}" if args.report else ""))

  return cli.run(run, compile_cache=False)


def console() -> None:
  """The installed command (pyproject's [project.scripts])."""
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  console()
