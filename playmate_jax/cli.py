"""What every entry point (launch.py, pipelines/*) shares: quiet library logging and one-sentence user errors."""

from __future__ import annotations

import logging
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


def run(main: Callable[[], object]) -> int:
  """Runs `main`; a UserError becomes `error: <sentence>` on stderr and exit status 2."""
  try:
    main()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0
