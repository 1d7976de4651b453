"""Throughput of the project's parts, measured on whatever devices JAX sees.

  python pipelines/benchmark.py train --config=configs/stage1.py [--config.KEY=VALUE ...] [--steps 30] [--json OUT]
  python pipelines/benchmark.py render [--renderer WEIGHTS_DIR|random|random:tiny] [--batch-sizes 1,32] [--parts]
                                       [--steps 30] [--json OUT]
  python pipelines/benchmark.py audio [--weights WAV2VEC2_DIR|random] [--seconds 3600] [--dtype bfloat16] [--json OUT]

`render`: warp + decode (Renderer.warp_decode: W then G, the per-frame cost of every video) at the released sizes
(random weights unless --renderer points to converted weights), in fp32 and bf16, per frame at each batch size;
W and G also timed apart; the matmul/conv FLOPs of W+G per frame (counted on the jaxpr) and the rate they imply; the PSNR of the bf16 image
against the fp32 one on the same inputs; with --parts, W's and G's stages timed one by one (bf16).

`audio`: wav2vec2 features (25 fps rows, chunked as configured in configs/stage1.py's audio section) for
--seconds of audio through a wav2vec2-base-sized encoder with random weights, or the converted one given by
--weights: wall time of a second full call after a compiling first one, real-time factor and peak device
memory (run it with two lengths to see that memory does not grow with the audio).

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
  state = state_lib.create_train_state(parts.model_fn, parts.tx, jax.random.key(0), mesh, parts.trainable)
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


def _time(fn, args, steps: int) -> tuple[float, list[float]]:
  """(compile seconds, per-call seconds over `steps` timed calls after 2 warm-up calls)."""
  import jax
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - t0
  for _ in range(2):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return compile_s, times


def render_inputs(model_params, batch: int, crop_size: int = 256, seed: int = 0):
  """A feature volume and source/driving keypoints of the renderer's shapes (values in realistic ranges)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  f = model_params["appearance_feature_extractor_params"]
  size = crop_size // 2 ** f.get("num_down_blocks", 2)
  feature = rng.standard_normal((batch, f["reshape_depth"], size, size, f["reshape_channel"])).astype(np.float32)
  kp = rng.uniform(-0.6, 0.6, (batch, model_params["warping_module_params"]["num_kp"], 3)).astype(np.float32)
  driving = kp + rng.normal(0, 0.03, kp.shape).astype(np.float32)
  return feature, kp, driving


def matmul_flops(fn, *args) -> float:
  """2 x the multiply-adds of every matmul and convolution in fn's jaxpr: the model FLOPs, counted the same way
  on every backend (XLA's own cost analysis does not count the GPU's library calls)."""
  import math

  import jax

  def walk(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
      name = eqn.primitive.name
      out = math.prod(eqn.outvars[0].aval.shape)
      if name == "dot_general":
        (contract, _), _ = eqn.params["dimension_numbers"]
        total += 2.0 * out * math.prod(eqn.invars[0].aval.shape[d] for d in contract)
      elif name == "conv_general_dilated":
        kernel, spec = eqn.invars[1].aval.shape, eqn.params["dimension_numbers"].rhs_spec
        total += 2.0 * out * kernel[spec[1]] * math.prod(kernel[d] for d in spec[2:])
      for value in eqn.params.values():
        for sub in value if isinstance(value, (list, tuple)) else (value,):
          inner = getattr(sub, "jaxpr", sub)
          if hasattr(inner, "eqns"):
            total += walk(inner) * (eqn.params.get("length", 1) if name == "scan" else 1)
    return total

  return walk(jax.make_jaxpr(fn)(*args).jaxpr)


def _render_parts(nets, feature, kp_s, kp_d):
  """{part: (module, fn(module, *args), args)}: W's and G's stages on inputs of the right shapes."""
  import jax
  import jax.numpy as jnp
  from playmate_jax.renderer.grid_sample import grid_sample_3d
  from playmate_jax.renderer.warping import fold_depth

  w, g = nets.warping_module, nets.spade_generator
  dense = w.dense_motion_network
  inputs, _ = jax.jit(lambda f, a, b: dense.hourglass_inputs(f, a, b))(feature, kp_s, kp_d)
  skips = jax.jit(lambda x: dense.hourglass.encoder(x))(inputs)
  prediction = jax.jit(lambda s: dense.hourglass.decoder(s))(skips)
  deformation = jnp.zeros(feature.shape[:4] + (3,), jnp.float32)
  warped = jax.jit(lambda f, d: fold_depth(grid_sample_3d(f.astype(w.dtype), d)))(feature, deformation)
  seg = jax.jit(lambda f, a, b: w(f, a, b)["out"])(feature, kp_s, kp_d)
  b, h, wd, c = seg.shape
  x64 = jnp.zeros((b, h, wd, 2 * c), jnp.float32)
  x128 = jnp.zeros((b, 2 * h, 2 * wd, 2 * c), jnp.float32)
  x256 = jnp.zeros((b, 4 * h, 4 * wd, c), jnp.float32)
  return {
      "W.hourglass_inputs": (dense, lambda m, f, a, b: m.hourglass_inputs(f, a, b), (feature, kp_s, kp_d)),
      "W.hourglass_encoder": (dense, lambda m, x: m.hourglass.encoder(x), (inputs,)),
      "W.hourglass_decoder": (dense, lambda m, s: m.hourglass.decoder(s), (skips,)),
      "W.mask_conv": (dense, lambda m, p: m.mask_logits(p), (prediction,)),
      "W.occlusion_conv": (dense, lambda m, p: m.occlusion_logits(p), (prediction,)),
      "W.final_grid_sample": (w, lambda m, f, d: grid_sample_3d(f.astype(m.dtype), d), (feature, deformation)),
      "W.third_fourth": (w, lambda m, x: m.fourth(m.third(x)), (warped,)),
      "G.middle_block": (g.G_middle[0], lambda m, x, s: m(x, s), (x64, seg)),
      "G.up_0": (g.up_0, lambda m, x, s: m(x, s), (x128, seg)),
      "G.up_1": (g.up_1, lambda m, x, s: m(x, s), (x256, seg)),
  }


def bench_render(renderer: str, batch_sizes: list[int], steps: int, parts: bool = False) -> dict:
  """Times Renderer.warp_decode (the call every video goes through), and W and G alone, in fp32 and bf16."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from playmate_jax.convert import common
  from playmate_jax.renderer.api import Renderer, jit_module
  from playmate_jax.renderer.config import RELEASED_MODEL_PARAMS, TINY_MODEL_PARAMS
  from playmate_jax.renderer.networks import abstract_params, networks_with_params

  crop_size = 256
  if renderer in ("random", "random:tiny"):  # random:tiny: a quick check on a CPU
    model_params = RELEASED_MODEL_PARAMS if renderer == "random" else TINY_MODEL_PARAMS
    crop_size = 256 if renderer == "random" else 64
    params = common.random_params(abstract_params(model_params))
  else:
    model_params, params = common.load_converted(renderer, "liveportrait")
  renderers = {name: Renderer(networks_with_params(model_params, params, dtype), model_params, dtype=dtype,
                              crop_size=crop_size)
               for name, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16))}

  result = {"device": jax.devices()[0].device_kind, "renderer": renderer,
            "params": sum(int(np.size(x)) for x in jax.tree.leaves(params))}
  for batch in batch_sizes:
    feature, kp_s, kp_d = jax.device_put(render_inputs(model_params, batch, crop_size))  # time compute, not transfers
    flops = matmul_flops(renderers["fp32"].warp_decode, feature, kp_s, kp_d)
    images = {}
    for name, r in renderers.items():
      key = f"{name}_b{batch}"
      compile_s, times = _time(r.warp_decode, (feature, kp_s, kp_d), steps)
      images[name] = np.asarray(r.warp_decode(feature, kp_s, kp_d), np.float32)
      median = statistics.median(times)
      result[f"{key}_wg_ms_per_frame"] = 1e3 * median / batch
      result[f"{key}_wg_ms_per_frame_iqr"] = 1e3 * float(np.subtract(*np.percentile(times, [75, 25]))) / batch
      result[f"{key}_wg_compile_s"] = compile_s
      result[f"{key}_wg_tflops_per_s"] = flops / median / 1e12
      nets = r.networks
      w, w_state = jit_module(nets.warping_module, lambda m, f, a, b: m(f, a, b)["out"])
      g, g_state = jit_module(nets.spade_generator, lambda m, x: m(x))
      _, w_times = _time(w, (w_state, feature, kp_s, kp_d), steps)
      _, g_times = _time(g, (g_state, w(w_state, feature, kp_s, kp_d)), steps)
      result[f"{key}_w_ms_per_frame"] = 1e3 * statistics.median(w_times) / batch
      result[f"{key}_g_ms_per_frame"] = 1e3 * statistics.median(g_times) / batch
      if parts and name == "bf16":
        for part, (module, fn, args) in _render_parts(nets, feature, kp_s, kp_d).items():
          run, state = jit_module(module, fn)
          _, part_times = _time(run, (state, *args), steps)
          result[f"{key}_{part}_ms_per_frame"] = 1e3 * statistics.median(part_times) / batch
    result[f"b{batch}_wg_gflop_per_frame"] = flops / batch / 1e9
    mse = float(np.mean((images["bf16"] - images["fp32"]) ** 2))
    result[f"b{batch}_bf16_psnr_db"] = float(10 * np.log10(1.0 / max(mse, 1e-20)))
    result[f"b{batch}_fp32_image_std"] = float(images["fp32"].std())
  result["image_size"] = int(images["fp32"].shape[1])
  stats = jax.local_devices()[0].memory_stats() or {}
  result["peak_memory_gib"] = stats.get("peak_bytes_in_use", float("nan")) / 2**30
  return result


def bench_audio(weights: str, seconds: float, dtype: str) -> dict:
  from playmate_jax.audio import wav2vec2
  from playmate_jax.configlib import load_config
  audio = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "stage1.py")).audio
  import dataclasses
  settings = dataclasses.asdict(wav2vec2.FeatureSettings.from_config(audio))
  settings["dtype"] = dtype
  if weights == "random":
    encoder = wav2vec2.random_encoder(**settings)
  else:
    from playmate_jax.convert.wav2vec2 import load_encoder
    encoder = load_encoder(weights, **settings)
  result = wav2vec2.throughput(encoder, seconds)
  result["peak_device_gib"] = (result.pop("peak_device_bytes") or float("nan")) / 2**30
  return result


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("what", choices=["train", "render", "audio"])
  parser.add_argument("--config", default=None, help="the config (train)")
  parser.add_argument("--renderer", default="random",
                      help="converted LivePortrait weights, random (released sizes) or random:tiny (render)")
  parser.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes (render)")
  parser.add_argument("--parts", action="store_true", help="also time W's and G's stages in bf16 (render)")
  parser.add_argument("--weights", default="random", help="converted wav2vec2/HuBERT weights, or random (audio)")
  parser.add_argument("--seconds", type=float, default=3600.0, help="length of audio to encode (audio)")
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="compute (audio)")
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--json", default=None, help="also write the figures to this file")
  args, overrides = parser.parse_known_args(argv)
  cli.setup_logging("WARNING")

  def run():
    from playmate_jax import configlib
    from playmate_jax.errors import UserError
    if args.what == "render":
      result = bench_render(args.renderer, [int(b) for b in args.batch_sizes.split(",")], args.steps, args.parts)
    elif args.what == "audio":
      result = bench_audio(args.weights, args.seconds, args.dtype)
    else:
      if not args.config:
        raise UserError(f"`benchmark.py {args.what}` needs --config=configs/stage1.py (or another config).")
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
