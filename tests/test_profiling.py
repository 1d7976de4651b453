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
