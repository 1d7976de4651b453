"""playmate_jax.profiling: a trace is written and its operations are summed by name."""

import jax
import jax.numpy as jnp

from playmate_jax import profiling


def test_trace_and_top_ops(tmp_path):
  f = jax.jit(lambda x: jnp.tanh(x @ x).sum())
  x = jnp.ones((256, 256))
  f(x).block_until_ready()
  with profiling.trace(str(tmp_path)):
    for _ in range(3):
      f(x).block_until_ready()
  rows = profiling.top_ops(str(tmp_path), n=5)
  assert 1 <= len(rows) <= 5
  assert all(r.total_ms > 0 and r.count >= 1 for r in rows)
  assert [r.total_ms for r in rows] == sorted((r.total_ms for r in rows), reverse=True)
  assert 0 < sum(r.share for r in rows) <= 1 + 1e-9
  assert any("PjitFunction" in r.name or "fusion" in r.name for r in rows)
  assert not any(r.name.startswith("$") for r in profiling.top_ops(str(tmp_path), n=1000))  # no Python frames


def test_kernel_classes_of_a_gpu_trace(tmp_path):
  """Kernels named as XLA and cuDNN name them on a GPU are summed by what they do; only the device's streams count."""
  import gzip
  import json
  names = {"nvjet_sm90_tst_128x128_64x6_2x1_v_bz_NNT": ("matmul", 40.0), "gemm_fusion_dot_204": ("matmul", 10.0),
           "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma": ("attention", 7.0),
           "input_add_reduce_fusion_2": ("reduction", 20.0), "loop_transpose_fusion_12": ("transpose", 3.0),
           "loop_add_compare_fusion": ("elementwise", 15.0), "wrapped_concatenate_31": ("elementwise", 4.0),
           "memcpy32_post": ("copy", 1.0)}
  for name, (cls, _) in names.items():
    assert profiling.kernel_class(name) == cls, name
  events = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "Stream #14(Compute)"}},
            {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
            {"ph": "X", "name": "PjitFunction(step)", "pid": 2, "tid": 1, "ts": 0, "dur": 500.0}]
  events += [{"ph": "X", "name": n, "pid": 1, "tid": 7, "ts": i, "dur": dur} for i, (n, (_, dur)) in
             enumerate(names.items())]
  folder = tmp_path / "plugins" / "profile" / "run"
  folder.mkdir(parents=True)
  with gzip.open(folder / "host.trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  rows = {r.name: r for r in profiling.kernel_classes(str(tmp_path))}
  assert {k: round(r.total_ms * 1e3, 6) for k, r in rows.items()} == {
      "matmul": 50.0, "reduction": 20.0, "elementwise": 19.0, "attention": 7.0, "transpose": 3.0, "copy": 1.0}
  assert rows["matmul"].count == 2 and abs(sum(r.share for r in rows.values()) - 1.0) < 1e-9
