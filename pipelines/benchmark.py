"""Throughput of the stage-1 train step, measured on whatever devices JAX sees.

  python pipelines/benchmark.py train --config=configs/stage1.py [--config.KEY=VALUE ...] [--steps 30] [--json OUT]

Times exactly the jitted step that launch.py runs (same model, optimizer, EMA, shardings, donated state) on random
batches of the config's shapes, so no dataset is needed. Reports the parameter count, compile time, per-step time
(median and spread over --steps timed steps, after warm-up), samples/s, XLA's FLOP count for one step and the peak
device memory where the backend reports it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from playmate_jax import cli  # noqa: E402


def random_batch(config, audio_dim: int, rng):
  """This process's share of a batch of the pipeline's shapes (random values: the step's cost does not depend on them)."""
  import jax
  from playmate_jax import data
  spec = data.batch_spec(config, audio_dim, jax.process_count())
  return {k: (rng.integers(-1, 8, shape) if dtype.kind == "i" else rng.standard_normal(shape)).astype(dtype)
          for k, (shape, dtype) in spec.items()}


def bench_train(config, steps: int) -> dict:
  import jax
  import numpy as np
  from playmate_jax import audio, configlib, generator
  from playmate_jax.train import mesh as mesh_lib
  from playmate_jax.train import state as state_lib
  from playmate_jax.train.trainer import build_components

  mesh = mesh_lib.make_mesh()
  configlib.validate(config, num_devices=mesh.size, process_count=jax.process_count())
  audio_dim = audio.get_encoder(config.audio).feature_dim
  parts = build_components(config, mesh, audio_dim)
  state = state_lib.create_train_state(parts.model_fn, parts.tx, jax.random.key(0), mesh)
  rng = np.random.default_rng(0)
  batches = [mesh_lib.global_batch(random_batch(config, audio_dim, rng), mesh) for _ in range(4)]
  key = jax.random.key(1)

  t0 = time.perf_counter()
  compiled = parts.train_step.lower(state, batches[0], key).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

  for i in range(3):  # warm-up
    state, metrics = parts.train_step(state, batches[i % 4], key)
  jax.block_until_ready(metrics)
  times = []
  for i in range(steps):
    t = time.perf_counter()
    state, metrics = parts.train_step(state, batches[i % 4], key)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  stats = jax.local_devices()[0].memory_stats() or {}
  median = statistics.median(times)
  return {
      "device": jax.devices()[0].device_kind, "num_devices": mesh.size, "batch_size": config.data.batch_size,
      "window": config.data.window, "prev_frames": config.data.prev_frames, "dtype": config.model.dtype,
      "params": generator.count_params(state["params"]), "compile_s": compile_s, "step_ms_median": 1e3 * median,
      "step_ms_min": 1e3 * min(times), "step_ms_max": 1e3 * max(times),
      "step_ms_iqr": 1e3 * (np.percentile(times, 75) - np.percentile(times, 25)),
      "samples_per_s": config.data.batch_size / median, "steps_per_s": 1.0 / median,
      "flops_per_step": flops, "tflops_per_s": flops / median / 1e12,
      "peak_memory_gib": stats.get("peak_bytes_in_use", float("nan")) / 2**30,
      "loss_finite": bool(np.isfinite(float(metrics["loss"]))),
  }


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("what", choices=["train"])
  parser.add_argument("--config", required=True)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--json", default=None, help="also write the figures to this file")
  args, overrides = parser.parse_known_args(argv)
  cli.setup_logging("WARNING")

  def run():
    from playmate_jax import configlib
    config = configlib.apply_overrides(configlib.load_config(args.config), configlib.parse_overrides(overrides))
    result = bench_train(config, args.steps)
    width = max(map(len, result))
    for k, v in result.items():
      print(f"{k:<{width}}  {v:,.3f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if args.json:
      with open(args.json, "w") as f:
        json.dump(result, f, indent=2)

  return cli.run(run)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
