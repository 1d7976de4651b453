"""Throughput of the project's parts, measured on whatever devices JAX sees.

  python pipelines/benchmark.py {train,sample,render,audio,data,faces,serve,memory,all} [--config=configs/stage1.py[:variant]]
      [--config.KEY=VALUE ...] [--steps N] [--repeats N] [--seconds S] [--json OUT] [--profile DIR]
  train:  [--variant NAME:KEY=VALUE,KEY=VALUE ...]
  render: [--renderer WEIGHTS_DIR|random|random:tiny] [--batch-sizes 1,32] [--parts]
  memory: [--memory-gb 16,24,40] [--checkpoint WORKDIR|random:CONFIG] [--renderer ...] [--seconds 60]
  audio:  [--weights WAV2VEC2_DIR|random] [--dtype bfloat16]

Every part excludes warm-up (compiling) calls and repeats its timed calls: medians with their spread (min, max,
IQR). The figures print as a table, one per line (name, value, unit; "n/a" where the backend does not report
one), and `--json OUT` writes them: a flat {name: value} for one part, and for `all` one object per part,
{"train": {...}, "sample": {...}, "render": {...}, "audio": {...}, "data": {...}} (printed as `train.mfu` etc.).
Peak device memory is the process's peak so far (under `all`, of every part run before it).

`train`: exactly the jitted step launch.py runs (same model, optimizer, EMA, shardings, donated state; stage 2
trains the emotion controller beside the frozen stage-1 part) on random batches of the config's shapes, so no
dataset is needed. Parameter count, compile time, step time (after 3 warm-up steps, --steps steps run back to
back as the training loop runs them, timed in groups of 5 (at least one): median, min, max, IQR over the groups),
the host's time to dispatch one step (`dispatch_ms_median`, hidden behind the device's work while it is shorter),
steps/s, samples/s (global and per device), peak device memory; `flops_per_step`, the model FLOPs
of one step (2 x the multiply-adds of every matmul and convolution of forward, backward and optimizer, counted on
the step's jaxpr, loops times their trip count), beside XLA's own count (`xla_flops_per_step_per_device`, the
cost_analysis of the compiled step: per device under SPMD, elementwise work included, library calls on a GPU
not); `mfu` = flops_per_step / step time / (num_devices x `peak_tflops_measured`), the peak being a dense bf16
matmul of `peak_matmul_size` (8192 on an accelerator, 1024 on a CPU; --peak-size) timed on one device.
`--variant NAME:KEY=VALUE,...` (repeatable) adds the step under other config settings, compiled in turn and timed
in turns with the base in one process (the figures then come per variant, and a table compares them); a variant
with model.remat=true is credited with the FLOPs of the step without it (recomputation is not model work). With
variants, peak memory is one figure for the process (`base.process_peak_memory_gib`); `temp_memory_gib` is each
case's own. Also the
Grain input pipeline of the config's dataset alone (the `data` figures) and `loader_headroom` = loader samples/s
/ step samples/s (target on a GPU: >= 3); without a dataset the loader figures are n/a with `loader_skipped`.

`sample`: motion for --seconds (default 60) of random normalized audio features with the config's model (random
weights), through generator.sample_sequence as animate.MotionModel.generate runs it: config.sample.ddim_steps
DDIM steps per window with audio CFG (stage 1) or three-way audio + emotion guidance (stage 2). Compile time
(the first call), wall time of --repeats full calls (median, min, max), frames/s, real-time factor (seconds of
audio per second of wall time), the model FLOPs of one window and the rate they imply, peak device memory.

`render`: warp + decode (Renderer.warp_decode: W then G, the per-frame cost of every video) at the released sizes
(random weights unless --renderer points to converted weights), in fp32 and bf16, per frame at each batch size;
W and G also timed apart; XLA's memory for the W+G program at each batch size (`*_wg_memory_gib`: temporary
buffers and images, what animate.py's automatic --batch-size weighs); the matmul/conv FLOPs of W+G per frame
(counted on the jaxpr) and the rate they imply;
the PSNR of the bf16 image against the fp32 one on the same inputs; with --parts, W's and G's stages timed one
by one (bf16).

`audio`: wav2vec2 features (25 fps rows, chunked as configured in configs/stage1.py's audio section) for
--seconds (default 3600) of audio through a wav2vec2-base-sized encoder with random weights, or the converted
one given by --weights: a compiling first call, then wall time of --repeats full calls (median, min, max),
real-time factor and peak device memory (run it with two lengths to see that memory does not grow with audio).

`data`: the training input pipeline alone (data.make_train_iterator on the config's dataset; the demo dataset
for :demo/:tiny or --config.data.name=demo): time to the end of 5 warm-up batches, then per-batch time over
--loader-batches batches (median, min, max, IQR), batches/s and samples/s sustained over them.

`faces`: the face finder (detector and 468-point mesh, or --face-models) on 1280x720 frames of tests.videos'
drifting astronaut (needs scikit-image, a test extra): ms per frame at --batch-sizes (default 1,8,32) and the
landmark jitter per frame over --seconds (default 8) of the scene, in pixels and per eye distance.

`serve`: the service (pipelines/bench_serve.py) with the config's motion model (random weights) and --renderer:
compile time, the time from submitting a job of --seconds (default 60) of speech to its stream's first fragment and to
its finished mp4, --jobs jobs submitted together (motion batched, up to --max-batch) and one after another, and the
motion's seconds per recording at batch 1, 2, 4 and 8.

`memory` (pipelines/bench_memory.py): animate.py and reenact.py on --seconds (default 60) of generated speech and
video, each in a process whose JAX allocator gets what it would on a card of each --memory-gb (default 16,24,40):
exit status, whole-command seconds, the render batch chosen, peak device memory, render frames/s.

`all`: data, train, sample, render and audio in one process (the loader is measured once, for data and train).
A :tiny config gets quick sizes: random:tiny renderer at batch 2 and 3 steps, 4 s of audio to sample, 2 s to
encode in float32; other configs the defaults above. Flags given explicitly win.

`--compile-cache` turns JAX's persistent compilation cache on (off by default, so that compile times are real).
`--profile DIR` (train, sample, all) writes jax.profiler traces (playmate_jax.profiling.trace) of 3 train steps
to DIR/train and of one full sample call to DIR/sample, after the timed calls.

The persistent compilation cache stays off here, so compile times are real compilations.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.bench_common import (matmul_flops, measure_peak, peak_memory_gib, random_batch, spread,  # noqa: E402
                                    timed, xla_flops)
from pipelines.bench_inference import bench_audio, bench_faces, bench_render  # noqa: E402
from playmate_jax import cli  # noqa: E402
from playmate_jax.errors import UserError  # noqa: E402

PARTS = ("train", "sample", "render", "audio", "data")


def bench_loader(config, batches: int = 50, warmup: int = 5) -> dict:
  """The Grain training pipeline alone (data.make_train_iterator on the config's dataset), no device work."""
  import jax
  from playmate_jax.data import loader
  t0 = time.perf_counter()
  iterator = loader.make_train_iterator(config, jax.process_index(), jax.process_count())
  for _ in range(warmup):
    next(iterator)
  warmup_s = time.perf_counter() - t0
  times = []
  for _ in range(batches):
    t = time.perf_counter()
    next(iterator)
    times.append(time.perf_counter() - t)
  del iterator
  rate = batches / sum(times)
  return {"dataset": config.data.name, "batch_size": config.data.batch_size,
          "worker_count": config.data.worker_count, "batches": batches, "warmup_s": warmup_s,
          **spread("batch_ms", times), "batches_per_s": rate,
          "samples_per_s": rate * config.data.batch_size}  # every process reads its share at this rate


def try_loader(config, batches: int) -> dict:
  """bench_loader's figures, or {"skipped": reason} when the dataset cannot be opened."""
  try:
    return bench_loader(config, batches)
  except UserError as e:
    return {"skipped": str(e)}


TRAIN_GROUP = 5  # train steps per timed group


class _TrainCase:
  """One config's train step, built and compiled, with its state and batches (bench_train's unit)."""

  def __init__(self, config, mesh, base: "_TrainCase | None" = None):
    import jax
    from playmate_jax import audio, configlib
    from playmate_jax.train import mesh as mesh_lib
    from playmate_jax.train import state as state_lib
    from playmate_jax.train.trainer import build_components
    configlib.validate(config, num_devices=mesh.size, process_count=jax.process_count())
    self.config = config
    audio_dim = audio.get_encoder(config.audio).feature_dim
    self.parts = build_components(config, mesh, audio_dim)
    shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
    same = base is not None and shapes(state_lib.abstract_state(
        self.parts.model_fn, self.parts.tx, jax.random.key(0), mesh, self.parts.trainable)) == shapes(
            {k: base.state[k] for k in ("step", "params", "ema_params", "frozen") if k in base.state} |
            {"opt_state": jax.eval_shape(self.parts.tx.init, base.state["params"])})
    if same:
      # The base's parameter values with this case's optimizer state: the random initialization compiles slowly
      # at paper scale, and the values do not change a step's cost.
      self.state = state_lib.fresh_state(base.state["params"], self.parts.tx, mesh, base.state.get("frozen"))
    else:
      self.state = state_lib.create_train_state(self.parts.model_fn, self.parts.tx, jax.random.key(0), mesh,
                                                self.parts.trainable, on_host=jax.process_count() == 1)
    rng = np.random.default_rng(0)
    self.batches = [mesh_lib.global_batch(random_batch(config, audio_dim, rng), mesh) for _ in range(4)]
    self.key = jax.random.key(1)
    # Model FLOPs: a rematerializing step's recomputed forward is work the model does not need, so it is counted
    # on the same step without remat.
    counted = self.parts
    if config.model.remat:
      plain = copy.deepcopy(config)
      plain.model.remat = False
      counted = build_components(plain, mesh, audio_dim)
    self.flops = matmul_flops(counted.train_step, self.state, self.batches[0], self.key)
    self.lowered = self.parts.train_step.lower(self.state, self.batches[0], self.key)
    self.times, self.dispatch = [], []

  def compile(self) -> "_TrainCase":
    t0 = time.perf_counter()
    self.step = self.lowered.compile()
    self.compile_s = time.perf_counter() - t0
    return self

  def run(self, steps: int, record: bool = True):
    """`steps` steps back to back, then one wait; records the mean step time and each step's dispatch time."""
    import jax
    t = time.perf_counter()
    for i in range(steps):
      d = time.perf_counter()
      self.state, self.metrics = self.step(self.state, self.batches[i % 4], self.key)
      if record:
        self.dispatch.append(time.perf_counter() - d)
    jax.block_until_ready(self.metrics)
    if record:
      self.times.append((time.perf_counter() - t) / steps)

  def figures(self, mesh, peak: dict) -> dict:
    import jax
    from playmate_jax import generator
    config = self.config
    median, b, n = statistics.median(self.times), config.data.batch_size, mesh.size
    memory = self.step.memory_analysis()
    temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
    return {
        "device": jax.devices()[0].device_kind, "num_devices": n, "stage": config.stage, "batch_size": b,
        "window": config.data.window, "prev_frames": config.data.prev_frames, "dtype": config.model.dtype,
        "residual_dtype": config.model.residual_dtype, "dropout": config.model.dropout,
        "dropout_bits": config.model.dropout_bits, "remat": config.model.remat,
        "params": generator.count_params(self.state["params"]), "compile_s": self.compile_s,
        **spread("step_ms", self.times), "dispatch_ms_median": statistics.median(self.dispatch) * 1e3,
        "steps_per_s": 1.0 / median, "samples_per_s": b / median, "samples_per_s_per_device": b / median / n,
        "flops_per_step": self.flops, "xla_flops_per_step_per_device": xla_flops(self.step),
        "tflops_per_s": self.flops / median / 1e12,
        **peak, "mfu": self.flops / median / (n * peak["peak_tflops_measured"] * 1e12),
        "temp_memory_gib": None if temp is None else temp / 2**30,
        "peak_memory_gib": peak_memory_gib(), "loss_finite": bool(np.isfinite(float(self.metrics["loss"]))),
    }


def bench_train(config, steps: int, peak: dict, loader: dict | None = None, profile: str | None = None,
                variants: dict | None = None) -> dict:
  """The train step on random batches; `peak` from measure_peak (for MFU), `loader` from try_loader (or None).

  variants: {name: config} to compare with `config` (named "base") in the same process: each is compiled in
  turn (a line on stderr says when), then all are timed in turns, a group of each in every round, so that a drift
  of the device (clocks, temperature) reaches them alike; the result is then {name: figures} with "base" first,
  and with `profile` each is traced to profile/NAME."""
  from playmate_jax import profiling
  from playmate_jax.train import mesh as mesh_lib

  mesh = mesh_lib.make_mesh()
  configs = {"base": config, **(variants or {})}
  cases = {}
  for name, c in configs.items():
    t0 = time.perf_counter()
    cases[name] = _TrainCase(c, mesh, cases.get("base")).compile()
    print(f"[train] {name}: built in {time.perf_counter() - t0 - cases[name].compile_s:.1f} s, compiled in "
          f"{cases[name].compile_s:.1f} s", file=sys.stderr, flush=True)
  for case in cases.values():   # warm-up
    case.run(3, record=False)
  # Steps run back to back, as the training loop runs them (it never waits for a step), so the host's dispatch of
  # one step overlaps the device's work on the one before. They are timed in groups of TRAIN_GROUP, each ended by
  # one wait; a group's time / TRAIN_GROUP is one sample of step_ms. dispatch_ms: the host's time in the call.
  for _ in range(max(1, steps // TRAIN_GROUP)):
    for case in cases.values():
      case.run(TRAIN_GROUP)
  if variants:
    print("[train] timed: " + ", ".join(f"{name} {statistics.median(c.times) * 1e3:.2f} ms"
                                         for name, c in cases.items()), file=sys.stderr, flush=True)
  if profile:
    for name, case in cases.items():
      with profiling.trace(profile if variants is None else os.path.join(profile, name)):
        case.run(3, record=False)
  results = {name: case.figures(mesh, peak) for name, case in cases.items()}
  if variants:   # the process's peak covers every case run so far: one figure (temp_memory_gib is each case's own)
    process_peak = [r.pop("peak_memory_gib") for r in results.values()][-1]
    results["base"]["process_peak_memory_gib"] = process_peak
  if loader is not None:
    for result in results.values():
      skipped = loader.get("skipped")
      result["loader_batches_per_s"] = None if skipped else loader["batches_per_s"]
      result["loader_samples_per_s"] = None if skipped else loader["samples_per_s"]
      result["loader_headroom"] = None if skipped else loader["samples_per_s"] / result["samples_per_s"]
      if skipped:
        result["loader_skipped"] = skipped
  return results if variants else results["base"]


def parse_variants(specs: list[str], config) -> dict:
  """--variant NAME:KEY=VALUE,KEY=VALUE ... -> {NAME: a copy of config with those config overrides}."""
  from playmate_jax import configlib
  variants = {}
  for spec in specs:
    name, sep, body = spec.partition(":")
    if not sep or not name or name == "base" or name in variants:
      raise UserError(f"--variant {spec!r}: write NAME:KEY=VALUE[,KEY=VALUE...] with a new name other than base.")
    pairs = [f"--config.{item.strip()}" for item in body.split(",") if item.strip()]
    variants[name] = configlib.apply_overrides(copy.deepcopy(config), configlib.parse_overrides(pairs))
  return variants


def print_variants(results: dict) -> None:
  """The variants side by side: step time, its change against base, MFU, compile time and temporary memory."""
  base = results["base"]["step_ms_median"]
  print(f"\n{'variant':<16} {'step ms':>9} {'IQR':>6} {'vs base':>8} {'samples/s':>10} {'MFU':>6} "
        f"{'compile s':>9} {'temp GiB':>8}")
  for name, r in results.items():
    temp = "n/a" if r["temp_memory_gib"] is None else f"{r['temp_memory_gib']:.2f}"
    print(f"{name:<16} {r['step_ms_median']:9.2f} {r['step_ms_iqr']:6.2f} {r['step_ms_median'] / base:8.3f} "
          f"{r['samples_per_s']:10,.0f} {r['mfu']:6.1%} {r['compile_s']:9.1f} {temp:>8}")


def bench_sample(config, seconds: float, repeats: int, profile: str | None = None) -> dict:
  """generator.sample_sequence over `seconds` of random normalized audio features, random model weights."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from playmate_jax import audio, generator, motion, profiling
  from playmate_jax import configlib
  from playmate_jax.generator.factory import init_params, model_factory, window_sampler

  configlib.validate(config)
  audio_dim = audio.get_encoder(config.audio).feature_dim
  model_fn = model_factory(config, audio_dim)
  params = jax.jit(init_params, static_argnums=0)(model_fn, jax.random.key(0))
  sampler = window_sampler(config, audio_dim)
  graphdef = sampler.graphdef
  frames = int(round(seconds * config.audio.fps))
  rng = np.random.default_rng(0)
  features = rng.standard_normal((frames, audio_dim)).astype(np.float32)
  identity = rng.standard_normal(motion.IDENTITY_DIM).astype(np.float32)
  emotion = motion.EMOTIONS.index("happy") if config.stage == 2 else None
  key = jax.random.key(0)

  def run():
    return generator.sample_sequence(sampler, params, features, identity, key, config, emotion=emotion)

  first_s, times, out = timed(run, (), repeats, warmup=0)
  if profile:
    with profiling.trace(profile):
      run()

  # Model FLOPs of one window: ddim_steps guided evaluations of the model on one window's shapes.
  l, k, c = config.data.window, config.data.prev_frames, config.data.audio_context
  w_e = config.sample.w_emotion if emotion is not None else None
  emotions = None if emotion is None else jnp.full((1,), emotion, jnp.int32)
  eps = lambda x, t, a, p, i: generator.guided_eps(nnx.merge(graphdef, params), x, t, a, p, i,
                                                   config.sample.w_audio, emotions, w_e)
  window_flops = config.sample.ddim_steps * matmul_flops(
      eps, jnp.zeros((1, l, motion.MOTION_DIM)), jnp.zeros((1,), jnp.int32), jnp.zeros((1, l + 2 * c, audio_dim)),
      jnp.zeros((1, k, motion.MOTION_DIM)), jnp.zeros((1, motion.IDENTITY_DIM)))
  windows = math.ceil(frames / l)
  wall = statistics.median(times)
  return {
      "device": jax.devices()[0].device_kind, "stage": config.stage, "audio_seconds": seconds, "frames": frames,
      "windows": windows, "ddim_steps": config.sample.ddim_steps,
      "guidance": "audio+emotion" if emotion is not None else "audio", "params": generator.count_params(params),
      "compile_s": first_s, "wall_s": wall, "wall_s_min": min(times), "wall_s_max": max(times),
      "repeats": repeats, "frames_per_s": frames / wall, "realtime_factor": seconds / wall,
      "flops_per_window": window_flops, "tflops_per_s": windows * window_flops / wall / 1e12,
      "peak_memory_gib": peak_memory_gib(), "finite": bool(np.isfinite(out).all()),
  }


UNITS = (("ms_per_frame", "ms/frame"), ("gflop_per_frame", "GFLOP/frame"), ("tflops_per_s", "TFLOP/s"),
         ("samples_per_s_per_device", "samples/s/device"), ("samples_per_s", "samples/s"), ("steps_per_s", "steps/s"),
         ("batches_per_s", "batches/s"), ("frames_per_s", "frames/s"), ("flops_per_step", "FLOP/step"),
         ("flops_per_step_per_device", "FLOP/step/device"),
         ("flops_per_window", "FLOP/window"), ("peak_tflops_measured", "TFLOP/s"), ("realtime_factor", "x real time"),
         ("loader_headroom", "x step rate"), ("mfu", "of peak"), ("_gib", "GiB"), ("_db", "dB"), ("_ms", "ms"),
         ("_seconds", "s"), ("_s", "s"))


def unit(name: str) -> str:
  base = name.rsplit(".", 1)[-1]
  for stat in ("_median", "_min", "_max", "_iqr"):
    base = base.removesuffix(stat)
  return next((u for end, u in UNITS if base.endswith(end)), "")


def value_text(v) -> str:
  if v is None:
    return "n/a"
  if isinstance(v, float):
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}" if v and abs(v) < 1e-2 else f"{v:,.3f}"
  return str(v)


def print_table(figures: dict) -> None:
  """One figure per line: name, value, unit (nested dicts as `part.name`)."""
  flat = {f"{part}.{k}": v for part, sub in figures.items() for k, v in sub.items()} \
      if all(isinstance(v, dict) for v in figures.values()) else figures
  width = max(map(len, flat))
  for k, v in flat.items():
    print(f"{k:<{width}}  {value_text(v):>14}  {unit(k) if v is not None else ''}".rstrip())


# --- command line ----------------------------------------------------------------------------------------------------

def print_top_ops(folder: str, n: int = 25) -> None:
  """The device ops that took the most time in each trace written under `folder` (also to DIR/PART/top_ops.txt)."""
  from playmate_jax import profiling
  dirs = []
  for part in ("train", "sample"):
    trace_dir = os.path.join(folder, part)
    if os.path.isdir(os.path.join(trace_dir, "plugins")):
      dirs.append((part, trace_dir))
    elif os.path.isdir(trace_dir):   # train --variant: one trace per variant
      dirs += [(f"{part} {name}", os.path.join(trace_dir, name)) for name in sorted(os.listdir(trace_dir))
               if os.path.isdir(os.path.join(trace_dir, name, "plugins"))]
  for part, trace_dir in dirs:
    lines = [str(row) for row in profiling.top_ops(trace_dir, n)]
    lines += ["-- by kernel:"] + [str(row) for row in profiling.top_ops(trace_dir, n, line="kernels")]
    lines += ["-- kernels by class:"] + [str(row) for row in profiling.kernel_classes(trace_dir)]
    with open(os.path.join(trace_dir, "top_ops.txt"), "w") as f:
      f.write("\n".join(lines) + "\n")
    print(f"\n{part}: the {n} ops with the most device time in the trace ({trace_dir})")
    print("\n".join(lines))


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("what", choices=[*PARTS, "all", "faces", "serve", "memory"])
  parser.add_argument("--config", default=None, help="the config (train, sample, data, all)")
  parser.add_argument("--renderer", default=None,
                      help="converted LivePortrait weights, random (released sizes) or random:tiny (render)")
  parser.add_argument("--batch-sizes", default=None, help="comma-separated batch sizes (render; default 1,32)")
  parser.add_argument("--parts", action="store_true", help="also time W's and G's stages in bf16 (render)")
  parser.add_argument("--weights", default="random", help="converted wav2vec2/HuBERT weights, or random (audio)")
  parser.add_argument("--seconds", type=float, default=None,
                      help="length of audio to sample (sample; default 60) or encode (audio; default 3600)")
  parser.add_argument("--dtype", default=None, choices=["bfloat16", "float32"],
                      help="compute (audio; default bfloat16)")
  parser.add_argument("--steps", type=int, default=None, help="timed steps (train, render; default 30)")
  parser.add_argument("--repeats", type=int, default=3, help="timed full calls (sample, audio)")
  parser.add_argument("--loader-batches", type=int, default=50, help="timed batches (data, train)")
  parser.add_argument("--peak-size", type=int, default=None, help="size of the peak matmul (train)")
  parser.add_argument("--profile", default=None, help="write a jax.profiler trace here (train, sample)")
  parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                      help="train: also time the config with these overrides (repeatable), in turns with the base")
  parser.add_argument("--jobs", type=int, default=4, help="jobs submitted together, then one by one (serve)")
  parser.add_argument("--max-batch", type=int, default=4, help="jobs batched in one motion call (serve)")
  parser.add_argument("--render-batch", type=int, default=16, help="frames per renderer call (serve)")
  parser.add_argument("--memory-gb", default="16,24,40", help="card sizes to emulate, GB (memory)")
  parser.add_argument("--checkpoint", default="random:configs/stage2.py",
                      help="the motion model animate.py runs (memory; default: the paper's stage 2, random weights)")
  parser.add_argument("--json", default=None, help="also write the figures to this file")
  parser.add_argument("--compile-cache", action="store_true",
                      help="use JAX's persistent compilation cache (off by default, so that compile times are "
                           "real; with it, a program already in the cache reports the time to load it)")
  args, overrides = parser.parse_known_args(argv)
  cli.setup_logging("WARNING")

  def run():
    from playmate_jax import configlib
    if args.variant and args.what != "train":
      raise UserError(f"--variant is for `benchmark.py train`, not `{args.what}`.")
    config = None
    if args.what in ("train", "sample", "data", "all", "serve"):
      if not args.config:
        raise UserError(f"`benchmark.py {args.what}` needs --config=configs/stage1.py (or another config).")
      config = configlib.apply_overrides(configlib.load_config(args.config), configlib.parse_overrides(overrides))
    tiny = args.what == "all" and config.get("variant") == "tiny"
    pick = lambda given, quick, default: given if given is not None else quick if tiny else default
    parts = PARTS if args.what == "all" else (args.what,)
    figures = {}
    loader = None
    if args.what == "data":  # without a dataset: a UserError, one sentence
      figures["data"] = bench_loader(config, args.loader_batches)
    elif "train" in parts:  # without a dataset: loader skipped, the step still timed on random batches
      loader = figures["data"] = try_loader(config, args.loader_batches)
    if "train" in parts:
      peak = measure_peak(args.peak_size)
      figures["train"] = bench_train(config, pick(args.steps, 30, 30), peak, loader,
                                     args.profile and os.path.join(args.profile, "train"),
                                     parse_variants(args.variant, config) if args.what == "train" else None)
    if "sample" in parts:
      figures["sample"] = bench_sample(config, pick(args.seconds, 4.0, 60.0), args.repeats,
                                       args.profile and os.path.join(args.profile, "sample"))
    if "render" in parts:
      batch_sizes = [int(b) for b in pick(args.batch_sizes, "2", "1,32").split(",")]
      figures["render"] = bench_render(pick(args.renderer, "random:tiny", "random"), batch_sizes,
                                       pick(args.steps, 3, 30), args.parts)
    if args.what == "faces":
      figures["faces"] = bench_faces([int(b) for b in (args.batch_sizes or "1,8,32").split(",")],
                                     args.seconds or 8.0, args.repeats)
      parts = ("faces",)
    if args.what == "serve":
      from pipelines.bench_serve import bench_serve
      figures["serve"] = bench_serve(args.config, args.renderer or "random", args.seconds or 60.0, args.jobs,
                                     args.max_batch, args.render_batch)
    if args.what == "memory":
      from pipelines.bench_memory import bench_memory
      figures["memory"] = bench_memory(args.checkpoint, args.renderer or "random",
                                       [float(g) for g in args.memory_gb.split(",")], args.seconds or 60.0)
    if "audio" in parts:
      dtype = pick(args.dtype, "float32", "bfloat16")
      figures["audio"] = bench_audio(args.weights, pick(args.seconds, 2.0, 3600.0), dtype, args.repeats)
    figures = {part: figures[part] for part in PARTS} if args.what == "all" else figures[args.what]
    print_table(figures)
    if args.what == "train" and args.variant:
      print_variants(figures)
    if args.json:
      with open(args.json, "w") as f:
        json.dump(figures, f, indent=2)
    if args.profile:
      print_top_ops(args.profile)

  return cli.run(run, compile_cache=args.compile_cache)


def console() -> None:
  """The installed command (pyproject's [project.scripts])."""
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  console()
