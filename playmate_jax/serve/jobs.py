"""The service's jobs: a folder of results on disk, a bounded queue, and one worker that owns the device.

Each job lives in ROOT/<id>/: `job.json` (its record: state, error, settings, times), the uploaded portrait and
speech, and, once done, `video.mp4` and `video.motion.npz`. While it renders, `stream.mp4` grows as a fragmented
MP4 (one fragment per generated window) that a player can read as it is written. The folder has a size limit:
finished jobs are removed oldest first. A restart keeps the finished ones; a job that was waiting or running when
the process ended is marked failed (its inputs were only in memory, prepared).

Inputs are read and checked when a job is submitted (`submit`), on the caller's thread: a photo with no face,
unreadable audio or an unknown emotion is refused there with its one sentence, before the job is queued. The
worker takes the jobs that wait together (up to `max_batch`) and runs them with `Animator.run`, which generates
their motion in one batched call; it is the only thread that renders, so the device runs one job's frames at a
time (the bound on concurrent device work).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable

from playmate_jax import cli
from playmate_jax.audio import num_frames
from playmate_jax.errors import UserError

FINISHED = ("done", "failed", "cancelled")
RECORD_FILE = "job.json"
VIDEO_FILE = "video.mp4"
MOTION_FILE = "video.motion.npz"
STREAM_FILE = "stream.mp4"


class QueueFull(UserError):
  """More jobs wait than the service takes."""


class Unavailable(UserError):
  """The service cannot take jobs (its worker failed to start)."""


@dataclasses.dataclass
class Record:
  """What the API tells of a job (`public`) and what is kept of it on disk (job.json)."""
  id: str
  state: str = "queued"
  error: str | None = None
  settings: dict = dataclasses.field(default_factory=dict)
  created: float = dataclasses.field(default_factory=time.time)
  started: float | None = None
  first_fragment: float | None = None   # when the stream's first fragment was written (seconds since the epoch)
  finished: float | None = None
  frames: int = 0                       # frames to render (known once the audio is read)
  frames_done: int = 0
  motion_done: bool = False
  batch: int = 1                        # jobs whose motion was generated in the same call

  @property
  def progress(self) -> float:
    """0..1: a tenth for the portrait and the motion, the rest for the frames."""
    if self.state == "done":
      return 1.0
    if self.state != "running":
      return 0.0
    base = 0.1 if self.motion_done else 0.02
    return round(base + 0.9 * self.frames_done / max(self.frames, 1), 4)

  def public(self) -> dict:
    return dict(id=self.id, state=self.state, progress=self.progress, error=self.error, frames=self.frames,
                frames_done=self.frames_done, settings=self.settings, created=self.created, started=self.started,
                first_fragment=self.first_fragment, finished=self.finished, batch=self.batch)


class Store:
  """The results folder: one sub-folder per job, at most `max_bytes` in all (finished jobs removed oldest first)."""

  def __init__(self, root: str, max_bytes: int):
    self.root, self.max_bytes = os.path.abspath(root), int(max_bytes)
    os.makedirs(self.root, exist_ok=True)
    cli.check_output_folder(os.path.join(self.root, RECORD_FILE), "--results")

  def folder(self, job_id: str) -> str:
    return os.path.join(self.root, job_id)

  def path(self, job_id: str, name: str) -> str:
    return os.path.join(self.root, job_id, name)

  def save(self, record: Record) -> None:
    cli.write_text(self.path(record.id, RECORD_FILE), json.dumps(dataclasses.asdict(record)))

  def load(self) -> list[Record]:
    """Every job on disk; one that was queued or running is now failed (the process ended under it)."""
    records = []
    for name in sorted(os.listdir(self.root)):
      try:
        with open(self.path(name, RECORD_FILE)) as f:
          record = Record(**json.load(f))
      except (OSError, ValueError, TypeError):
        continue   # not a job folder, or one cut off before its record was written
      if record.state not in FINISHED:
        record.state, record.finished = "failed", time.time()
        record.error = "The service restarted while this job was waiting or running; submit it again."
        self.save(record)
      if record.state != "done":
        _remove(self.path(name, STREAM_FILE))
      records.append(record)
    return records

  def size(self, job_id: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(self.folder(job_id)):
      for name in files:
        try:
          total += os.path.getsize(os.path.join(dirpath, name))
        except OSError:
          pass
    return total

  def prune(self, records: dict[str, Record]) -> list[str]:
    """Removes the oldest finished jobs until the folder fits `max_bytes`; returns their ids."""
    sizes = {job_id: self.size(job_id) for job_id in records}
    total = sum(sizes.values())
    removed = []
    for record in sorted((r for r in records.values() if r.state in FINISHED), key=lambda r: r.finished or 0):
      if total <= self.max_bytes:
        break
      shutil.rmtree(self.folder(record.id), ignore_errors=True)
      total -= sizes[record.id]
      removed.append(record.id)
    return removed


class Service:
  """Jobs submitted, queued, run on one worker thread, and kept on disk.

    service = Service(animator, Store("results", 10 << 30))
    service.start()                 # warms up, then runs jobs as they come
    job_id = service.submit(image_path, audio_path, settings)      # UserError: the one-sentence 4xx
  """

  def __init__(self, animator, store: Store, *, max_queue: int = 32, max_batch: int = 4,
               log: Callable[[str], None] = print, live_model=None, max_live: int = 8):
    self.animator, self.store = animator, store
    self.live_model, self.max_live = live_model, int(max_live)   # a live motion model (or None), and its sessions
    self.live_sessions = 0
    self.max_queue, self.max_batch, self.log = int(max_queue), int(max_batch), log
    self.records: dict[str, Record] = {r.id: r for r in store.load()}
    self._jobs: dict[str, object] = {}           # prepared inputs of the waiting jobs (the animator's Jobs)
    self._cancel: set[str] = set()
    self._lock = threading.Condition()
    self._worker: threading.Thread | None = None
    self._stop = False
    self.ready = threading.Event()               # set once the programs are compiled (or that failed)
    self.failure: str | None = None              # why the worker could not start

  # --- submitting and asking ---------------------------------------------------------------------------------

  def new_folder(self) -> str:
    """A fresh job id whose folder exists (the uploads are written into it before `submit`)."""
    job_id = uuid.uuid4().hex[:16]
    os.makedirs(self.store.folder(job_id))
    return job_id

  def submit(self, job_id: str, image: str, audio: str, settings: dict) -> Record:
    """Checks and reads a job's inputs (UserError: nothing is kept) and queues it; `settings` are JobSpec fields."""
    folder = self.store.folder(job_id)
    try:
      if self.failure is not None:
        raise Unavailable(self.failure + " Restart it; the log says more.")
      with self._lock:
        waiting = sum(r.state == "queued" for r in self.records.values())
      if waiting >= self.max_queue:
        raise QueueFull(f"The service already has {waiting} jobs waiting; try again when some have finished.")
      job = self.animator.prepare_job(image, audio, os.path.join(folder, VIDEO_FILE), settings,
                                      stream=os.path.join(folder, STREAM_FILE))
    except BaseException:
      shutil.rmtree(folder, ignore_errors=True)
      raise
    record = Record(id=job_id, settings=dict(settings), frames=num_frames(len(job.wave)))
    self.store.save(record)
    with self._lock:
      self.records[job_id] = record
      self._jobs[job_id] = job
      self._lock.notify_all()
    return record

  @contextlib.contextmanager
  def paused(self):
    """The worker takes no job while this lasts: jobs submitted meanwhile wait together and are batched."""
    with self._lock:
      yield

  def get(self, job_id: str) -> Record | None:
    with self._lock:
      return self.records.get(job_id)

  def cancel(self, job_id: str) -> Record | None:
    """Cancels a waiting or running job (a running one stops at its next batch of frames); a finished one is
    removed with its files."""
    with self._lock:
      record = self.records.get(job_id)
      if record is None:
        return None
      if record.state == "queued":
        self._jobs.pop(job_id, None)
        self._finish(record, "cancelled")
      elif record.state == "running":
        self._cancel.add(job_id)
      else:
        del self.records[job_id]
        shutil.rmtree(self.store.folder(job_id), ignore_errors=True)
      return record

  def wait(self, job_id: str, timeout: float = 600.0) -> Record:
    """The job's record once it has finished (for tests and the batch client)."""
    deadline = time.monotonic() + timeout
    with self._lock:
      while self.records[job_id].state not in FINISHED:
        left = deadline - time.monotonic()
        if left <= 0:
          raise TimeoutError(f"job {job_id} did not finish in {timeout} s")
        self._lock.wait(min(left, 0.5))
      return self.records[job_id]

  # --- live sessions ----------------------------------------------------------------------------------------------

  def open_live(self, image: str, name: str, settings: dict):
    """A LiveSession for a portrait file (settings: rate, emotion, w_audio, w_emotion, face, seed); UserError for a
    photo with no face, an unknown emotion, a full service or none with a live model."""
    if self.live_model is None:
      raise UserError("This service has no live model; start it with --live-checkpoint WORKDIR (a model trained "
                      "with configs/stage1.py:live).")
    with self._lock:
      if self.live_sessions >= self.max_live:
        raise QueueFull(f"The service already runs {self.live_sessions} live sessions, its limit; try again later.")
      self.live_sessions += 1
    try:
      return self.animator.live_session(self.live_model, image, settings)
    except BaseException as e:
      self.close_live()
      if isinstance(e, UserError):
        raise type(e)(str(e).replace(image, name)) from None
      raise

  def close_live(self) -> None:
    with self._lock:
      self.live_sessions -= 1

  # --- the worker --------------------------------------------------------------------------------------------

  def start(self, warm_up: Callable[[], None] | None = None) -> None:
    """Starts the worker thread; it runs `warm_up` (compiling the programs) before the first job."""
    self._worker = threading.Thread(target=self._work, args=(warm_up,), name="playmate-serve-worker", daemon=True)
    self._worker.start()

  def stop(self) -> None:
    with self._lock:
      self._stop = True
      self._lock.notify_all()
    if self._worker is not None:
      self._worker.join(timeout=60)

  def _work(self, warm_up) -> None:
    try:
      if warm_up is not None:
        warm_up()
    except BaseException as e:   # the process stays up to say why; no job is taken
      self.failure = f"The service could not compile its programs ({type(e).__name__}: {str(e)[:300]})."
      self.log(self.failure)
      raise
    finally:
      self.ready.set()
    while True:
      with self._lock:
        while not self._stop and not self._jobs:
          self._lock.wait()
        if self._stop:
          return
        ids = [i for i, r in self.records.items() if r.state == "queued" and i in self._jobs][:self.max_batch]
        jobs = [self._jobs.pop(i) for i in ids]
        for i in ids:
          self.records[i].state, self.records[i].started = "running", time.time()
          self.records[i].batch = len(ids)
      for i in ids:
        self.store.save(self.records[i])
      self._run(ids, jobs)

  def _run(self, ids: list[str], jobs: list) -> None:
    window = int(self.animator.model.config.data.window)

    def on_frames(index: int, n: int) -> bool:
      """Progress of a job; True stops it (cancelled)."""
      record = self.records[ids[index]]
      record.motion_done = True
      record.frames_done += n
      if record.first_fragment is None and record.frames_done > window:
        record.first_fragment = time.time()   # the writer cuts a fragment at each window's first frame
      return ids[index] in self._cancel

    try:
      for index, result in self.animator.run(jobs, on_frames=on_frames):
        record = self.records[ids[index]]
        if isinstance(result, Exception) and ids[index] in self._cancel:
          self._finish(record, "cancelled")
        elif isinstance(result, Exception):
          self._finish(record, "failed", str(result))
        else:
          self._finish(record, "done")
    except Exception as e:   # not the user's input: the device, the disk; every job of the batch is told
      self.log(f"jobs {', '.join(ids)} failed: {type(e).__name__}: {e}")
      message = cli.out_of_memory(e, "try again when fewer jobs run, or ask for a shorter recording")
      message = message or (f"The service failed while making this video ({type(e).__name__}: {str(e)[:200]}); try "
                            "again, and report it if it repeats.")
      for i in ids:
        if self.records[i].state == "running":
          self._finish(self.records[i], "failed", message)
    finally:
      with self._lock:
        for i in ids:
          self._cancel.discard(i)
        for job_id in self.store.prune(self.records):
          self.records.pop(job_id, None)

  def _finish(self, record: Record, state: str, error: str | None = None) -> None:
    with self._lock:
      record.state, record.error, record.finished = state, error, time.time()
      if state != "done":
        for name in (VIDEO_FILE, MOTION_FILE):
          _remove(self.store.path(record.id, name))
      _remove(self.store.path(record.id, STREAM_FILE))   # a reader that has it open still reads it to the end
      self._lock.notify_all()
    if os.path.isdir(self.store.folder(record.id)):
      self.store.save(record)


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except FileNotFoundError:
    pass
