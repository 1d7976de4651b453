"""playmate_jax.cli: one-sentence user errors and the persistent compilation cache every entry point turns on."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = """
import sys, jax, jax.numpy as jnp
from playmate_jax import cli
from playmate_jax.errors import UserError
def main():
  print(float(jax.jit(lambda x: jnp.sin(x).sum())(jnp.arange(3.0))))
  if sys.argv[1] == "fail":
    raise UserError("Portrait x.jpg has no face; give a photo with one frontal face.")
  if sys.argv[1] == "oom":   # 2 TiB: more than the machine has, so XLA's allocation fails (RESOURCE_EXHAUSTED)
    jax.jit(lambda: jnp.ones((2**41,), jnp.uint8))().block_until_ready()
  if sys.argv[1] == "other":   # another runtime error of the device stays a traceback (a bug to report)
    raise jax.errors.JaxRuntimeError("INTERNAL: something else")
sys.exit(cli.run(main, oom_fix="rerun with a smaller --batch-size"))
"""


def run(tmp_path, *args, cache):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PLAYMATE_COMPILE_CACHE=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return subprocess.run([sys.executable, "-c", PROGRAM, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120)


def test_compilation_cache_is_written_and_can_be_turned_off(tmp_path):
  cache = tmp_path / "xla"
  first = run(tmp_path, "ok", cache=cache)
  assert first.returncode == 0, first.stderr
  entries = sorted(os.listdir(cache))
  assert entries                                     # the compiled program was stored ...
  again = run(tmp_path, "ok", cache=cache)
  assert again.returncode == 0 and again.stdout == first.stdout
  assert sorted(os.listdir(cache)) == entries        # ... and found again: nothing new written
  off = run(tmp_path, "ok", cache="off")
  assert off.returncode == 0 and not os.path.exists(os.path.join(ROOT, "off"))


def test_user_error_is_one_line_and_exit_2(tmp_path):
  result = run(tmp_path, "fail", cache="off")
  assert result.returncode == 2
  assert result.stderr.strip() == "error: Portrait x.jpg has no face; give a photo with one frontal face."


def test_device_out_of_memory_is_one_sentence_with_the_fix(tmp_path):
  """A real allocation failure of the device (here the CPU's) ends in one line naming the size and the entry
  point's fix, exit status 2; any other runtime error is left as it is."""
  result = run(tmp_path, "oom", cache="off")
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip() == ("error: The cpu ran out of memory, asking for 2048.0 GiB more; rerun with a "
                                   "smaller --batch-size.")
  other = run(tmp_path, "other", cache="off")
  assert other.returncode == 1 and "INTERNAL: something else" in other.stderr and "Traceback" in other.stderr


def test_stopwatch_spans_share_one_start():
  """Watches of two threads with one t0 place their stages on one timeline: first start, last end."""
  import time
  from playmate_jax.timing import Stopwatch
  t0 = time.perf_counter()
  main, worker = Stopwatch(t0), Stopwatch(t0)
  with main("load"):
    time.sleep(0.01)
  with worker("restore"):
    time.sleep(0.01)
  with main("load"):   # entered again: the seconds add up, the span runs from the first start to the last end
    pass
  (load0, load1), (restore0, restore1) = main.spans["load"], worker.spans["restore"]
  assert 0 <= load0 < restore0 < restore1 <= load1
  assert 0.01 <= main.seconds["load"] < load1 - load0
  assert main.timeline() == f"load {load0:.1f}-{load1:.1f}"
