"""What every part of pipelines/benchmark.py measures with: timed repeats, spreads, peak memory, a matmul peak,
FLOPs counted on a jaxpr or by XLA, and random training batches."""

from __future__ import annotations

import math
import statistics
import time

import numpy as np

from playmate_jax.cli import peak_memory_gib  # noqa: F401  (the parts import it from here)


# --- measuring -------------------------------------------------------------------------------------------------------

def timed(fn, args, repeats: int, warmup: int = 2):
  """(seconds of the first call (compiling), seconds of each of `repeats` calls after `warmup` more, last output)."""
  import jax
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  first_s = time.perf_counter() - t0
  for _ in range(warmup):
    out = jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return first_s, times, out


def spread(name: str, times: list[float], scale: float = 1e3) -> dict[str, float]:
  """{name}_median, _min, _max, _iqr of `times` (seconds) times `scale` (default: milliseconds)."""
  q1, q3 = np.percentile(times, [25, 75])
  return {f"{name}_median": scale * statistics.median(times), f"{name}_min": scale * min(times),
          f"{name}_max": scale * max(times), f"{name}_iqr": scale * float(q3 - q1)}


def measure_peak(size: int | None = None, repeats: int = 10) -> dict:
  """The dense bf16 matmul rate of one device: an n x n by n x n product (n = 8192 on an accelerator, 1024 on a
  CPU), median of `repeats` calls after warm-up; MFU's denominator."""
  import jax
  import jax.numpy as jnp
  n = size or (1024 if jax.default_backend() == "cpu" else 8192)
  ka, kb = jax.random.split(jax.random.key(0))
  a, b = (jax.random.normal(k, (n, n), jnp.bfloat16) for k in (ka, kb))
  _, times, _ = timed(jax.jit(jnp.matmul), (a, b), repeats)
  median = statistics.median(times)
  return {"peak_tflops_measured": 2.0 * n ** 3 / median / 1e12, "peak_matmul_size": n,
          "peak_matmul_dtype": "bfloat16", "peak_matmul_ms_median": 1e3 * median}


def matmul_flops(fn, *args) -> float:
  """2 x the multiply-adds of every matmul and convolution in fn's jaxpr: the model FLOPs, counted the same way
  on every backend (XLA's own cost analysis does not count the GPU's library calls).

  Recurses into every sub-jaxpr (jit/pjit, custom_jvp/custom_vjp, remat, scan, while, cond): a scan body counts
  `length` times, a cond its costliest branch, a while body once (its trip count is not known before it runs).
  """
  import jax

  def walk(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
      name = eqn.primitive.name
      if name == "dot_general":
        (contract, _), _ = eqn.params["dimension_numbers"]
        total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(eqn.invars[0].aval.shape[d] for d in contract)
      elif name == "conv_general_dilated":  # each output: in-features per group x kernel window multiply-adds
        kernel, spec = eqn.invars[1].aval.shape, eqn.params["dimension_numbers"].rhs_spec
        total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * kernel[spec[1]] * math.prod(kernel[d] for d in spec[2:])
      subs = [walk(getattr(sub, "jaxpr", sub))
              for value in eqn.params.values() for sub in (value if isinstance(value, (list, tuple)) else (value,))
              if hasattr(getattr(sub, "jaxpr", sub), "eqns")]
      if name == "cond":
        total += max(subs, default=0.0)
      else:
        total += sum(subs) * (eqn.params["length"] if name == "scan" else 1)
    return total

  return walk(jax.make_jaxpr(fn)(*args).jaxpr)


def xla_flops(compiled) -> float | None:
  """XLA's cost_analysis FLOPs of a compiled function, where the backend reports them."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) if cost and "flops" in cost else None


# --- the parts -------------------------------------------------------------------------------------------------------

def random_batch(config, audio_dim: int, rng):
  """This process's share of a batch of the pipeline's shapes (random values: the step's cost does not depend on them)."""
  import jax
  from playmate_jax.data import loader
  spec = loader.batch_spec(config, audio_dim, jax.process_count())
  return {k: (rng.integers(-1, 8, shape) if dtype.kind == "i" else rng.standard_normal(shape)).astype(dtype)
          for k, (shape, dtype) in spec.items()}
