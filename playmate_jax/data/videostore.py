"""Preprocessing's results on disk: DATA_DIR/.preprocess holds the settings, one result per finished video and
the workers' temporary files; every file is written atomically, so a crash loses only the videos in flight."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from playmate_jax.errors import UserError

WORK_DIR = ".preprocess"


def source_stamp(path: str) -> dict:
  st = os.stat(path)
  return dict(size=int(st.st_size), mtime_ns=int(st.st_mtime_ns))


class VideoStore:
  """DATA_DIR/.preprocess: settings.json, one result per finished video (videos/KEY.json, plus KEY.npz with
  the clips' arrays for an accepted video; the .json, written last, marks it done), tmp/ for the workers."""

  def __init__(self, out_dir: str):
    self.root = os.path.join(out_dir, WORK_DIR)
    self.videos = os.path.join(self.root, "videos")
    self.tmp = os.path.join(self.root, "tmp")
    os.makedirs(self.videos, exist_ok=True)

  def check_settings(self, settings: Mapping[str, Any]) -> None:
    """Records the settings on the first run; refuses a rerun whose settings differ."""
    path = os.path.join(self.root, "settings.json")
    settings = json.loads(json.dumps(settings))
    if os.path.isfile(path):
      with open(path) as f:
        before = json.load(f)
      if before != settings:
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        raise UserError(f"{os.path.dirname(self.root)} was preprocessed with other settings ({', '.join(changed)} "
                        "differ); use another --out folder, or delete it to start over.")
      return
    write_atomic(path, json.dumps(settings, indent=1, sort_keys=True).encode())

  def _key(self, relpath: str) -> str:
    return os.path.join(self.videos, hashlib.sha1(relpath.encode()).hexdigest()[:20])

  def load(self, relpath: str, source: str) -> dict | None:
    """The finished result of a video (its metadata), or None if it is not done or the file changed since."""
    try:
      with open(self._key(relpath) + ".json") as f:
        meta = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
      return None
    return meta if meta.get("file") == relpath and meta.get("source") == source_stamp(source) else None

  def save(self, meta: dict, arrays: Mapping[str, np.ndarray] | None = None) -> None:
    key = self._key(meta["file"])
    if arrays is not None:
      buf = io.BytesIO()
      np.savez(buf, **arrays)
      write_atomic(key + ".npz", buf.getvalue())
    write_atomic(key + ".json", json.dumps(meta).encode())

  def arrays(self, relpath: str) -> Any:
    return np.load(self._key(relpath) + ".npz")

  def clear_tmp(self) -> None:
    shutil.rmtree(self.tmp, ignore_errors=True)


def write_atomic(path: str, data: bytes) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise
