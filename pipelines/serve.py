"""The animation service: models loaded once, an HTTP API with its OpenAPI page, a web page, jobs batched.

  python pipelines/serve.py --checkpoint WORKDIR|CHECKPOINT_DIR --renderer WEIGHTS_DIR|random
                            [--host 127.0.0.1] [--port 8000] [--token TOKEN] [--face-models DIR]
                            [--results serve-results] [--max-storage-gb 10] [--max-upload-mb 50]
                            [--max-queue 32] [--max-batch 4] [--batch-size N] [--dtype bfloat16|float32]
                            [--live-checkpoint LIVE_WORKDIR] [--max-live 8]

Open http://HOST:PORT/ for the page, http://HOST:PORT/docs for the API. The motion model and the renderer are
restored once and every program a job runs is compiled before the first job (`Animator.compile`), so a request
never waits for a compilation (another --ddim-steps than the config's compiles once, on its first use). Jobs that
wait together (up to --max-batch) generate their motion in one batched device call; one worker renders, so the
device does one job's frames at a time. Results stay in --results (oldest removed past --max-storage-gb) and
survive a restart. It listens on localhost only unless --host says otherwise; --token (or $PLAYMATE_TOKEN)
requires `Authorization: Bearer TOKEN` on every /v1 request.

Live: a model trained with configs/stage1.py:live (a bounded audio look-ahead) given as --live-checkpoint, or as
--checkpoint itself, serves the WebSocket /v1/live (speech in as it is spoken, frames out as they are rendered) and
the page's live mode; at most --max-live sessions at once share the device.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from playmate_jax import cli  # noqa: E402
from playmate_jax.errors import UserError  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", required=True, help="a training workdir (newest checkpoint) or one checkpoint; "
                 "random:CONFIG for that config's model with random weights (meaningless motion, for trying it)")
  p.add_argument("--renderer", required=True, help="converted LivePortrait weights folder, random or random:tiny")
  p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
  p.add_argument("--port", type=int, default=8000)
  p.add_argument("--token", default=os.environ.get("PLAYMATE_TOKEN"),
                 help="require 'Authorization: Bearer TOKEN' (default: $PLAYMATE_TOKEN, else none)")
  p.add_argument("--face-models", default=None, help="LivePortrait's pretrained_weights folder (insightface models)")
  p.add_argument("--results", default="serve-results", help="folder for the jobs' inputs and results")
  p.add_argument("--max-storage-gb", type=float, default=10.0, help="size limit of --results")
  p.add_argument("--max-upload-mb", type=float, default=50.0, help="size limit of one uploaded file")
  p.add_argument("--max-queue", type=int, default=32, help="jobs that may wait; more are refused (429)")
  p.add_argument("--max-batch", type=int, default=4, help="waiting jobs whose motion is generated in one call")
  p.add_argument("--batch-size", type=int, default=None,
                    help="frames per renderer call (default: the largest of 16, 8, 4, 2, 1 whose render program fits the GPU's free memory; 16 on a CPU)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16", help="renderer compute dtype")
  p.add_argument("--no-stitching", action="store_true", help="turn LivePortrait's stitching off")
  p.add_argument("--live-checkpoint", default=None, help="a live model's workdir (configs/stage1.py:live) for "
                 "/v1/live (default: --checkpoint, if it is a live model)")
  p.add_argument("--max-live", type=int, default=8, help="live sessions at once")
  return p.parse_args(argv)


def build(args: argparse.Namespace, log=print):
  """(app, service): the models restored, the service started (compiling on its worker before the first job)."""
  import numpy as np

  from playmate_jax import animate as anim
  from playmate_jax.animate import live as live_lib
  from playmate_jax.animate.job import Animator, batch_shapes
  from playmate_jax.renderer.api import Renderer
  from playmate_jax.serve import app as app_lib
  from playmate_jax.serve import jobs as jobs_lib

  if not args.checkpoint.startswith("random:") and not os.path.exists(args.checkpoint):
    raise UserError(f"Checkpoint {args.checkpoint} does not exist; pass a training workdir or one of its "
                    "checkpoints/<step> folders.")
  if args.live_checkpoint is not None and not args.live_checkpoint.startswith("random:") and \
     not os.path.exists(args.live_checkpoint):
    raise UserError(f"Live checkpoint {args.live_checkpoint} does not exist; pass a workdir trained with "
                    "configs/stage1.py:live.")
  for name in ("max_queue", "max_batch", "batch_size", "max_upload_mb", "max_storage_gb", "max_live"):
    if getattr(args, name) is not None and getattr(args, name) <= 0:
      raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)} must be positive.")
  batch_shapes(args.max_batch)   # refuses a --max-batch above the largest compiled batch
  store = jobs_lib.Store(args.results, int(args.max_storage_gb * (1 << 30)))
  renderer = Renderer.from_spec(args.renderer, args.dtype)
  model = anim.MotionModel.load(args.checkpoint)
  animator = Animator(renderer, model, batch_size=args.batch_size, stitching=not args.no_stitching,
                      face_models=args.face_models)
  live_model = None
  if args.live_checkpoint is not None:
    live_model = anim.MotionModel.load(args.live_checkpoint)
    live_lib.check_live(live_model)
  elif int(model.config.model.audio_lookahead) >= 0:
    live_model = model
  service = jobs_lib.Service(animator, store, max_queue=args.max_queue, max_batch=args.max_batch, log=log,
                             live_model=live_model, max_live=args.max_live)

  def warm_up():
    animator.compile(args.max_batch)
    if live_model is not None:
      blank = np.full((256, 256, 3), 128, np.uint8)
      live_lib.warm_up(live_model, renderer, anim.load_portrait(renderer, blank, None))

  service.start(warm_up=warm_up)
  return app_lib.create_app(service, token=args.token, max_upload_mb=args.max_upload_mb), service


def check_port(host: str, port: int) -> None:
  """UserError when the address cannot be listened on (in use, or not this machine's)."""
  import socket
  try:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
      s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      s.bind((host, port))
  except OSError as e:
    raise UserError(f"Cannot listen on {host}:{port} ({e.strerror}); pass another --port, or stop what uses it.")


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  cli.setup_logging("WARNING")

  def run():
    import uvicorn
    check_port(args.host, args.port)   # before the models load: a port in use is one sentence at once
    app, service = build(args)
    print(f"compiling; then serving http://{args.host}:{args.port}/ (API: /docs), results in "
          f"{os.path.abspath(args.results)}; Ctrl-C stops", flush=True)
    try:
      uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
      service.stop()

  return cli.run(run, oom_fix="restart it with a smaller --batch-size (frames per renderer call) or --max-batch")


def console() -> None:
  """The installed command (pyproject's [project.scripts])."""
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  console()
