"""What every entry point (launch.py, pipelines/*) shares: quiet library logging and one-sentence user errors."""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import sys
import tempfile
from typing import Callable

import numpy as np

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


# What the machine refuses, said as the fix: disk full, no permission, read-only.
_OS_FIXES = {errno.ENOSPC: "the disk is full; free some space (or write elsewhere) and run the command again",
             errno.EDQUOT: "the disk quota is exceeded; free some space (or write elsewhere) and run it again",
             errno.EACCES: "permission denied; choose a folder you can write to (or fix its permissions)",
             errno.EPERM: "permission denied; choose a folder you can write to (or fix its permissions)",
             errno.EROFS: "the file system is read-only; choose a writable folder"}


def peak_memory_gib() -> float | None:
  """Peak bytes in use on the first local device so far, in GiB; None where the backend does not say (a CPU)."""
  jax = sys.modules.get("jax")
  stats = (jax.local_devices()[0].memory_stats() or {}) if jax is not None else {}
  return stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats else None


def peak_device_memory() -> str:
  """", peak device memory X GiB" (peak_memory_gib), or "" where the backend does not say; what animate.py and
  reenact.py print last, and `benchmark.py memory` reads."""
  peak = peak_memory_gib()
  return "" if peak is None else f", peak device memory {peak:.2f} GiB"


OOM_FIX = "use smaller batches, or free the device of other programs"


def out_of_memory(error: BaseException, fix: str = OOM_FIX) -> str | None:
  """The one sentence for a device that ran out of memory (XLA's RESOURCE_EXHAUSTED, at compile or run time),
  naming `fix`; None for any other error."""
  jax = sys.modules.get("jax")
  if jax is None or not isinstance(error, jax.errors.JaxRuntimeError) or "RESOURCE_EXHAUSTED" not in str(error):
    return None
  asked = re.search(r"allocat\w* (\d+) bytes", str(error))   # "trying to allocate N bytes" (GPU), "allocating N" (CPU)
  asked = f", asking for {int(asked.group(1)) / 2**30:.1f} GiB more" if asked else ""
  try:
    device = jax.devices()[0].device_kind
  except RuntimeError:
    device = "device"
  return f"The {device} ran out of memory{asked}; {fix}."


def run(main: Callable[[], object], *, compile_cache: bool = True, oom_fix: str = OOM_FIX) -> int:
  """Runs `main` (its int result is the exit status, else 0); a UserError becomes `error: <sentence>` on stderr and exit status 2, and so does a full disk or a
  folder that cannot be written (the file named with the fix), and a device out of memory (`out_of_memory`, with
  the entry point's `oom_fix`). Ctrl-C or SIGTERM ends with one line and status
  130 / 143; the jobs write their outputs through temporary files, so nothing half-written is left. With
  `compile_cache`, JAX's persistent compilation cache is on (`enable_compilation_cache`)."""
  if compile_cache:
    enable_compilation_cache()
  previous = signal.getsignal(signal.SIGTERM)
  if previous in (signal.SIG_DFL, None):  # SIGTERM as Ctrl-C, so that cleanups run (a trainer installs its own)
    signal.signal(signal.SIGTERM, _terminated)
  try:
    code = main()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt as e:
    print(f"{'terminated' if isinstance(e, _Terminated) else 'interrupted'}: stopped; files already finished "
          "are kept, none is left half-written.", file=sys.stderr)
    return 143 if isinstance(e, _Terminated) else 130
  except Exception as e:
    if isinstance(e, OSError) and e.errno in _OS_FIXES:
      where = e.filename or "an output file"
      print(f"error: could not write {where}: {_OS_FIXES[e.errno]}.", file=sys.stderr)
      return 2
    sentence = out_of_memory(e, oom_fix)
    if sentence is None:
      raise
    print(f"error: {sentence}", file=sys.stderr)
    return 2
  finally:
    if previous in (signal.SIG_DFL, None):
      signal.signal(signal.SIGTERM, signal.SIG_DFL)
  return code if isinstance(code, int) else 0


class _Terminated(KeyboardInterrupt):
  """SIGTERM, raised where Python is, like Ctrl-C's KeyboardInterrupt."""


def _terminated(signum, frame):
  raise _Terminated()


def check_output_folder(path: str, option: str = "--out") -> None:
  """One sentence, before any work, when the folder an output goes to is missing or cannot be written (tried with
  a temporary file, which also catches read-only file systems and root-owned mounts)."""
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise UserError(f"Output folder {folder} does not exist; create it or choose another {option} path.")
  try:
    fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise UserError(f"Output folder {folder} cannot be written ({e.strerror}); choose another {option} path or fix "
                    "its permissions.") from None


def umask() -> int:
  """The process's file-creation mask (reading it means setting it: it is set straight back)."""
  mask = os.umask(0)
  os.umask(mask)
  return mask


def publish(tmp: str, path: str) -> None:
  """Moves a finished temporary file into place with the mode any new file gets (mkstemp makes it 0600)."""
  os.chmod(tmp, 0o666 & ~umask())
  os.replace(tmp, path)


def write_through(path: str, write: Callable[[str], None]) -> None:
  """write(tmp) fills a temporary file beside `path` (with its extension), which then takes its place (publish): an
  interrupted or failed write leaves no partial file and the old one, if any, as it was."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(path)[1], prefix=".tmp-", dir=folder)
  os.close(fd)
  try:
    write(tmp)
    publish(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def save_npz(path: str, **arrays) -> None:
  """np.savez through a temporary file beside `path`, renamed into place: never a half-written file."""
  def write(tmp):
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
  write_through(path, write)


def write_text(path: str, text: str) -> None:
  """A text file written through a temporary file beside `path`, renamed into place: never half-written."""
  def write(tmp):
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
  write_through(path, write)


def free_name(path: str) -> str:
  """`path`, or the first of NAME-2.EXT, NAME-3.EXT, ... that does not exist yet (a default output never
  overwrites an earlier one)."""
  stem, ext = os.path.splitext(path)
  if stem.endswith(".motion"):
    stem, ext = stem[:-len(".motion")], ".motion" + ext
  k = 2
  while os.path.exists(path):
    path, k = f"{stem}-{k}{ext}", k + 1
  return path
