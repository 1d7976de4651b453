"""What every entry point (launch.py, pipelines/*) shares: quiet library logging and one-sentence user errors."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from playmate_jax.errors import UserError

# Libraries whose INFO/WARNING chatter is not for users (e.g. Orbax's "Metadata file does not exist").
_NOISY = ("absl", "jax._src", "orbax", "grain", "tensorflow_datasets", "matplotlib")


def setup_logging(level: str = "INFO") -> None:
  logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for name in _NOISY:
    logging.getLogger(name).setLevel(logging.ERROR)
  try:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)
  except ImportError:
    pass


def enable_compilation_cache() -> str | None:
  """Turns on JAX's persistent compilation cache; returns its folder (None when turned off).

  The folder is $PLAYMATE_COMPILE_CACHE, or ~/.cache/playmate_jax/xla when that is unset; `off` turns the cache
  off. A second run of the same job (the same model sizes and shapes) then loads its compiled programs instead of
  compiling them again: tens of seconds on a GPU for the paper-scale DiT and the renderer. Every program is cached,
  however quick its compile (JAX's default skips those under a second): a job dispatches dozens of small ones
  (array conversions, keypoint transforms), and on a GPU each such compile costs a tenth of a second or more.
  """
  folder = os.environ.get("PLAYMATE_COMPILE_CACHE", os.path.expanduser("~/.cache/playmate_jax/xla"))
  if folder.lower() in ("off", "0", "none", ""):
    return None
  import jax
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return folder


def run(main: Callable[[], object], *, compile_cache: bool = True) -> int:
  """Runs `main`; a UserError becomes `error: <sentence>` on stderr and exit status 2. With `compile_cache`,
  JAX's persistent compilation cache is on (`enable_compilation_cache`)."""
  if compile_cache:
    enable_compilation_cache()
  try:
    main()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0
