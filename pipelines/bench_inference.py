"""pipelines/benchmark.py's inference parts: the renderer (W + G, and its stages), the audio encoder and the face
finder."""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from pipelines.bench_common import matmul_flops, peak_memory_gib, timed


def render_inputs(model_params, batch: int, crop_size: int = 256, seed: int = 0):
  """A feature volume and source/driving keypoints of the renderer's shapes (values in realistic ranges)."""
  rng = np.random.default_rng(seed)
  f = model_params["appearance_feature_extractor_params"]
  size = crop_size // 2 ** f.get("num_down_blocks", 2)
  feature = rng.standard_normal((batch, f["reshape_depth"], size, size, f["reshape_channel"])).astype(np.float32)
  kp = rng.uniform(-0.6, 0.6, (batch, model_params["warping_module_params"]["num_kp"], 3)).astype(np.float32)
  driving = kp + rng.normal(0, 0.03, kp.shape).astype(np.float32)
  return feature, kp, driving


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
  """Times Renderer.warp_decode (the call every video goes through), and W and G alone, in fp32 and bf16; with
  the device memory its compiled program needs beyond its inputs at each batch size (Renderer.warp_decode_bytes,
  which animate.py's automatic --batch-size weighs against the free memory)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from playmate_jax import shapes
  from playmate_jax.renderer.api import Renderer, jit_module
  from playmate_jax.renderer.config import RELEASED_MODEL_PARAMS, TINY_MODEL_PARAMS
  from playmate_jax.renderer.networks import abstract_params, networks_with_params

  crop_size = 256
  if renderer in ("random", "random:tiny"):  # random:tiny: a quick check on a CPU
    model_params = RELEASED_MODEL_PARAMS if renderer == "random" else TINY_MODEL_PARAMS
    crop_size = 256 if renderer == "random" else 64
    params = shapes.random_params(abstract_params(model_params))
  else:
    model_params, params = shapes.load_converted(renderer, "liveportrait")
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
      compile_s, times, _ = timed(r.warp_decode, (feature, kp_s, kp_d), steps)
      images[name] = np.asarray(r.warp_decode(feature, kp_s, kp_d), np.float32)
      median = statistics.median(times)
      result[f"{key}_wg_ms_per_frame"] = 1e3 * median / batch
      result[f"{key}_wg_ms_per_frame_iqr"] = 1e3 * float(np.subtract(*np.percentile(times, [75, 25]))) / batch
      result[f"{key}_wg_compile_s"] = compile_s
      result[f"{key}_wg_tflops_per_s"] = flops / median / 1e12
      result[f"{key}_wg_memory_gib"] = r.warp_decode_bytes(batch) / 2**30   # what --batch-size auto weighs
      nets = r.networks
      w, w_state = jit_module(nets.warping_module, lambda m, f, a, b: m(f, a, b)["out"])
      g, g_state = jit_module(nets.spade_generator, lambda m, x: m(x))
      _, w_times, _ = timed(w, (w_state, feature, kp_s, kp_d), steps)
      _, g_times, _ = timed(g, (g_state, w(w_state, feature, kp_s, kp_d)), steps)
      result[f"{key}_w_ms_per_frame"] = 1e3 * statistics.median(w_times) / batch
      result[f"{key}_g_ms_per_frame"] = 1e3 * statistics.median(g_times) / batch
      if parts and name == "bf16":
        for part, (module, fn, args) in _render_parts(nets, feature, kp_s, kp_d).items():
          run, state = jit_module(module, fn)
          _, part_times, _ = timed(run, (state, *args), steps)
          result[f"{key}_{part}_ms_per_frame"] = 1e3 * statistics.median(part_times) / batch
    result[f"b{batch}_wg_gflop_per_frame"] = flops / batch / 1e9
    mse = float(np.mean((images["bf16"] - images["fp32"]) ** 2))
    result[f"b{batch}_bf16_psnr_db"] = float(10 * np.log10(1.0 / max(mse, 1e-20)))
    result[f"b{batch}_fp32_image_std"] = float(images["fp32"].std())
  result["image_size"] = int(images["fp32"].shape[1])
  result["peak_memory_gib"] = peak_memory_gib()
  return result


def bench_audio(weights: str, seconds: float, dtype: str, repeats: int = 3) -> dict:
  """wav2vec2 encoding of `seconds` of random audio: a compiling first call, then `repeats` timed full calls."""
  import dataclasses

  import jax
  from playmate_jax.audio.wav2vec2_features import FeatureSettings, random_encoder
  from playmate_jax.configlib import load_config
  audio = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "stage1.py")).audio
  settings = dataclasses.asdict(FeatureSettings.from_config(audio))
  settings["dtype"] = dtype
  if weights == "random":
    encoder = random_encoder(**settings)
  else:
    from playmate_jax.convert.wav2vec2 import load_encoder
    encoder = load_encoder(weights, **settings)
  rng = np.random.default_rng(0)
  wave = (0.1 * rng.standard_normal(int(seconds * encoder.settings.sample_rate))).astype(np.float32)
  first_s, times, feats = timed(encoder.encode, (wave,), repeats, warmup=0)
  wall = statistics.median(times)
  return {"device": jax.devices()[0].device_kind, "audio_seconds": seconds, "rows": int(feats.shape[0]),
          "feature_dim": int(feats.shape[1]), "dtype": encoder.settings.dtype, "encoder": encoder.name,
          "first_call_s": first_s, "wall_s": wall, "wall_s_min": min(times), "wall_s_max": max(times),
          "repeats": repeats, "realtime_factor": seconds / wall, "traces": dict(encoder.trace_counts),
          "finite": bool(np.isfinite(feats).all()), "peak_device_gib": peak_memory_gib()}


# --- the table -------------------------------------------------------------------------------------------------------

# (how a figure's name ends, with any _median/_min/_max/_iqr dropped; its unit), first match wins.
def bench_faces(batch_sizes: list[int], seconds: float, repeats: int = 5, face_models: str | None = None) -> dict:
  """FaceFinder on 1280x720 frames of a talking face (tests.videos' drifting astronaut): ms per frame at each batch
  size, and landmark jitter: the RMS second difference of each landmark over consecutive frames divided by
  sqrt(6) (the per-frame noise of a white-noise track; the scene's own drift is smooth and adds next to nothing),
  in pixels and as a share of the distance between the eye centres."""
  from playmate_jax.face.finder import finder
  from tests import videos
  scene = videos._face_scene(1280, 720, seed=0)
  frames = [scene(t / 25.0) for t in range(int(seconds * 25))]
  find = finder(face_models)
  out = {"frames": len(frames), "face_models": face_models or "mediapipe"}
  for b in batch_sizes:
    batch = [frames[k % len(frames)] for k in range(b)]
    find.find_batch(batch)  # compile
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      find.find_batch(batch)
      times.append(time.perf_counter() - t0)
    out[f"ms_per_frame_batch{b}"] = 1000 * float(np.median(times)) / b
  tracks, eyes = [], []
  for k in range(0, len(frames), 32):
    for faces in find.find_batch(frames[k:k + 32]):
      if not faces:
        tracks.append(None)
        continue
      tracks.append(faces[0].landmarks)
      lm = faces[0].landmarks  # eye distance: the mesh's eye corners (33, 133) and (362, 263)
      eyes.append(float(np.linalg.norm(lm[[33, 133]].mean(0) - lm[[362, 263]].mean(0))))
  found = [t for t in tracks if t is not None]
  out["found_share"] = len(found) / len(tracks)
  runs = [np.stack(tracks[i:i + 3]) for i in range(len(tracks) - 2) if all(t is not None for t in tracks[i:i + 3])]
  second = np.stack([r[0] - 2 * r[1] + r[2] for r in runs])
  jitter = float(np.sqrt(np.mean(np.sum(second ** 2, axis=-1)) / 6.0))
  out["landmark_jitter_px"] = jitter
  out["landmark_jitter_eye_distance"] = jitter / float(np.median(eyes))
  return out
