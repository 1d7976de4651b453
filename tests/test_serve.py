"""The service (pipelines/serve.py, playmate_jax/serve): the HTTP API on tiny models, jobs streamed, batched,
cancelled, kept across a restart, refused with one sentence.

Tiny trained models (tests/conftest.py), tiny random renderer weights, the astronaut as the portrait.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

import cv2
import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from playmate_jax import video
from playmate_jax.serve import app as app_lib
from playmate_jax.serve import jobs as jobs_lib
from pipelines import serve as serve_cli
from tests import videos


@pytest.fixture(scope="module")
def media(tmp_path_factory):
  folder = tmp_path_factory.mktemp("serve_media")
  videos.write_photos(folder, ".png")
  speech = videos.tone_bursts(2.3, 22050)
  sf.write(folder / "speech.wav", speech, 22050)
  sf.write(folder / "long.wav", np.tile(speech, 8), 22050)   # 18 s: long enough to cancel while it renders
  (folder / "empty.wav").write_bytes(b"")
  return folder


def build(checkpoint, results, **extra):
  args = serve_cli.parse_args(["--checkpoint", str(checkpoint), "--renderer", "random:tiny", "--dtype", "float32",
                               "--results", str(results), "--max-batch", "2", "--batch-size", "8",
                               *[str(a) for kv in extra.items() for a in (f"--{kv[0].replace('_', '-')}", kv[1])]])
  return serve_cli.build(args, log=lambda message: None)


@contextlib.contextmanager
def listening(app):
  """The app served by uvicorn on a free localhost port, on a thread: yields the port."""
  import socket
  import threading
  import uvicorn
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  while not server.started:
    assert thread.is_alive(), "the test server did not start"
    time.sleep(0.05)
  try:
    yield port
  finally:
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def served(stage2_run, tmp_path_factory):
  app, service = build(stage2_run, tmp_path_factory.mktemp("results"))
  assert service.ready.wait(300)
  yield TestClient(app), service
  service.stop()


def files(media, image="portrait.png", audio="speech.wav"):
  return {"image": (image, (media / image).read_bytes()), "audio": (audio, (media / audio).read_bytes())}


def wait_done(client, job_id, timeout=120):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    status = client.get(f"/v1/animations/{job_id}").json()
    if status["state"] in jobs_lib.FINISHED:
      return status
    time.sleep(0.1)
  raise AssertionError(f"job {job_id} did not finish: {status}")


def one_sentence(response, status):
  assert response.status_code == status, response.text
  message = response.json()["error"]
  assert message.endswith(".") and "\n" not in message and "Traceback" not in message, message
  return message


def test_an_animation_streams_while_it_is_made_then_is_kept(served, media):
  client, service = served
  r = client.post("/v1/animations", files=files(media), data={"emotion": "happy", "pose": "sweep"})
  assert r.status_code == 202, r.text
  job_id = r.json()["id"]
  with client.stream("GET", f"/v1/animations/{job_id}/stream") as stream:
    chunks = [(time.time(), chunk) for chunk in stream.iter_bytes()]
  status = wait_done(client, job_id)
  assert status["state"] == "done" and status["progress"] == 1.0 and status["error"] is None
  data = b"".join(c for _, c in chunks)
  assert data[4:8] == b"ftyp" and b"moof" in data       # a fragmented MP4
  assert status["first_fragment"] < status["finished"]  # playable before the job ended
  assert chunks[0][0] < status["finished"]

  mp4 = client.get(f"/v1/animations/{job_id}/video")
  assert mp4.status_code == 200 and mp4.headers["content-type"] == "video/mp4"
  path = service.store.path(job_id, jobs_lib.VIDEO_FILE)
  info = video.probe(path)
  assert info.num_frames == status["frames"] == 58 and info.has_audio   # 2.3 s at 25 fps
  streamed = service.store.path(job_id, "streamed.mp4")
  with open(streamed, "wb") as f:
    f.write(data)
  assert video.count_frames(streamed) == info.num_frames      # the stream holds every frame
  os.remove(streamed)
  npz = client.get(f"/v1/animations/{job_id}/motion")
  assert npz.status_code == 200 and len(npz.content) > 1000
  curves = client.get(f"/v1/animations/{job_id}/curves").json()
  assert len(curves["yaw"]) == len(curves["mouth"]) == 58 and curves["fps"] == 25
  assert np.std(curves["yaw"]) > 1.0    # the sweep turns the head
  after = client.get(f"/v1/animations/{job_id}/stream")   # a finished job's stream is its mp4
  assert after.status_code == 200 and after.content == mp4.content


def test_bad_input_is_a_4xx_with_one_sentence(served, media, tmp_path):
  client, service = served
  message = one_sentence(client.post("/v1/animations", files=files(media, image="cat.png")), 400)
  assert "No human face" in message and "cat.png" in message and service.store.root not in message
  message = one_sentence(client.post("/v1/animations", files=files(media, audio="cat.png")), 400)
  assert "cat.png" in message and "audio" in message
  one_sentence(client.post("/v1/animations", files=files(media, audio="empty.wav")), 400)
  message = one_sentence(client.post("/v1/animations", files=files(media), data={"emotion": "giddy"}), 400)
  assert "giddy" in message
  message = one_sentence(client.post("/v1/animations", files=files(media), data={"face": "3"}), 400)
  assert "face 3" in message
  one_sentence(client.post("/v1/animations", files={"image": files(media)["image"]}), 422)
  one_sentence(client.post("/v1/animations", files=files(media), data={"pose": "dance"}), 422)
  one_sentence(client.post("/v1/animations", files=files(media), data={"ddim_steps": "0"}), 422)
  one_sentence(client.post("/v1/animations", files=files(media), data={"w_audio": "loud"}), 422)
  one_sentence(client.get("/v1/animations/0123abcd"), 404)
  one_sentence(client.get("/v1/animations/../etc/passwd"), 404)
  one_sentence(client.get("/nothing/here"), 404)
  small = TestClient(app_lib.create_app(service, max_upload_mb=0.1))
  message = one_sentence(small.post("/v1/animations", files=files(media)), 413)
  assert "0.1 MB" in message
  # nothing of a refused job is left in the results folder
  assert all(os.path.isfile(os.path.join(service.store.root, d, jobs_lib.RECORD_FILE))
             for d in os.listdir(service.store.root) if not d.startswith("."))


def test_a_queued_job_is_not_done_yet_and_can_be_cancelled(stage2_run, media, tmp_path):
  app, service = build(stage2_run, tmp_path / "results")   # worker not started: jobs wait
  service.stop()
  client = TestClient(app)
  job_id = client.post("/v1/animations", files=files(media)).json()["id"]
  assert client.get(f"/v1/animations/{job_id}").json()["state"] == "queued"
  one_sentence(client.get(f"/v1/animations/{job_id}/video"), 409)
  assert client.delete(f"/v1/animations/{job_id}").status_code == 200
  assert client.get(f"/v1/animations/{job_id}").json()["state"] == "cancelled"
  assert client.delete(f"/v1/animations/{job_id}").status_code == 200    # a finished job is removed
  one_sentence(client.get(f"/v1/animations/{job_id}"), 404)
  assert not os.path.exists(service.store.folder(job_id))


def test_jobs_waiting_together_share_one_motion_call(stage2_run, media, tmp_path):
  app, service = build(stage2_run, tmp_path / "results")
  assert service.ready.wait(300)
  with service.paused():   # two jobs submitted while the worker waits: they are taken together
    client = TestClient(app)
    ids = []
    for _ in range(2):
      record = service.submit(service.new_folder(), str(media / "portrait.png"), str(media / "speech.wav"),
                              dict(emotion="sad"))
      ids.append(record.id)
  statuses = [wait_done(client, i) for i in ids]
  service.stop()
  assert [s["state"] for s in statuses] == ["done", "done"]
  assert [s["batch"] for s in statuses] == [2, 2]
  motions = [np.load(service.store.path(i, jobs_lib.MOTION_FILE))["exp"] for i in ids]
  assert motions[0].shape == motions[1].shape == (58, 21, 3)
  assert not np.allclose(motions[0], motions[1])   # rows of a batch draw their own noise


def test_a_running_job_is_cancelled_at_its_next_frames(served, media):
  client, service = served
  job_id = client.post("/v1/animations", files=files(media, audio="long.wav")).json()["id"]
  deadline = time.monotonic() + 120
  while client.get(f"/v1/animations/{job_id}").json()["frames_done"] == 0:
    assert time.monotonic() < deadline
    time.sleep(0.02)
  client.delete(f"/v1/animations/{job_id}")
  status = wait_done(client, job_id)
  assert status["state"] == "cancelled" and status["frames_done"] < status["frames"]
  assert not any(os.path.exists(service.store.path(job_id, name))
                 for name in (jobs_lib.VIDEO_FILE, jobs_lib.MOTION_FILE, jobs_lib.STREAM_FILE))


def test_a_restart_keeps_finished_jobs_and_fails_interrupted_ones(tmp_path):
  store = jobs_lib.Store(str(tmp_path), 1 << 30)
  for job_id, state in (("aa", "done"), ("bb", "running"), ("cc", "queued")):
    os.makedirs(store.folder(job_id))
    store.save(jobs_lib.Record(id=job_id, state=state, finished=time.time() if state == "done" else None))
  (tmp_path / "aa" / jobs_lib.VIDEO_FILE).write_bytes(b"x" * 10)
  os.makedirs(tmp_path / "half")   # a folder cut off before its record: not a job
  records = {r.id: r for r in jobs_lib.Store(str(tmp_path), 1 << 30).load()}
  assert sorted(records) == ["aa", "bb", "cc"] and records["aa"].state == "done"
  for job_id in ("bb", "cc"):
    assert records[job_id].state == "failed" and "restarted" in records[job_id].error
    with open(store.path(job_id, jobs_lib.RECORD_FILE)) as f:
      assert json.load(f)["state"] == "failed"


def test_the_results_folder_keeps_its_size_limit_oldest_first(tmp_path):
  store = jobs_lib.Store(str(tmp_path), 2500)
  records = {}
  for k, (job_id, state) in enumerate((("old", "done"), ("mid", "failed"), ("new", "done"), ("wait", "queued"))):
    os.makedirs(store.folder(job_id))
    (tmp_path / job_id / "video.mp4").write_bytes(b"x" * 1000)
    records[job_id] = jobs_lib.Record(id=job_id, state=state, finished=None if state == "queued" else 100.0 + k)
  assert store.prune(records) == ["old", "mid"]   # 4000 bytes -> 2000: the two oldest finished go
  assert sorted(os.listdir(tmp_path)) == ["new", "wait"]


def test_a_token_guards_the_api_and_the_docs_are_served_locally(served, media):
  client, service = served
  guarded = TestClient(app_lib.create_app(service, token="s3cret"))
  one_sentence(guarded.get("/v1/info"), 401)
  one_sentence(guarded.get("/v1/info", headers={"Authorization": "Bearer wrong"}), 401)
  assert guarded.get("/v1/info", headers={"Authorization": "Bearer s3cret"}).json()["stage"] == 2
  assert guarded.get("/v1/info?token=s3cret").status_code == 200     # for <video src> and download links
  docs = client.get("/docs").text
  assert "swagger" in docs.lower() and "cdn" not in docs.lower()
  spec = client.get("/openapi.json").json()
  assert {"/v1/animations", "/v1/animations/{job_id}", "/v1/animations/{job_id}/stream"} <= set(spec["paths"])
  assert client.get("/").status_code == 200 and "Animate" in client.get("/").text


def test_faces_of_a_portrait_largest_first(served, media, tmp_path):
  client, _ = served
  from skimage import data
  two = np.full((512, 1024, 3), 200, np.uint8)
  two[:, :512] = data.astronaut()
  two[56:456, 580:980] = cv2.resize(data.astronaut(), (400, 400), interpolation=cv2.INTER_AREA)
  cv2.imwrite(str(tmp_path / "two.png"), cv2.cvtColor(np.ascontiguousarray(two), cv2.COLOR_RGB2BGR))
  found = client.post("/v1/faces", files={"image": ("two.png", (tmp_path / "two.png").read_bytes())}).json()
  assert found["width"] == 1024 and len(found["faces"]) == 2
  areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in (f["box"] for f in found["faces"])]
  assert areas[0] > areas[1]
  assert found["faces"][0]["box"][2] < 512      # the large face is the left one
  one_sentence(client.post("/v1/faces", files={"image": ("cat.png", (media / "cat.png").read_bytes())}), 400)


def test_a_worker_that_could_not_start_is_a_503_not_a_hang(served, media, tmp_path):
  _, running = served
  service = jobs_lib.Service(running.animator, jobs_lib.Store(str(tmp_path / "results"), 1 << 30),
                             log=lambda message: None)

  def broken():
    raise RuntimeError("out of memory while compiling")

  service.start(warm_up=broken)
  assert service.ready.wait(10) and "out of memory" in service.failure
  client = TestClient(app_lib.create_app(service))
  message = one_sentence(client.post("/v1/animations", files=files(media)), 503)
  assert "could not compile" in message and "Restart" in message


def test_a_port_in_use_and_a_missing_checkpoint_are_one_sentence(tmp_path, capsys):
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    code = serve_cli.main(["--checkpoint", "random:configs/stage1.py:tiny", "--renderer", "random:tiny",
                           "--port", str(port), "--results", str(tmp_path / "r")])
  err = capsys.readouterr().err.strip()
  assert code == 2 and err.startswith(f"error: Cannot listen on 127.0.0.1:{port}") and "\n" not in err
  code = serve_cli.main(["--checkpoint", str(tmp_path / "none"), "--renderer", "random:tiny", "--port", "0",
                         "--results", str(tmp_path / "r")])
  err = capsys.readouterr().err.strip()
  assert code == 2 and "does not exist" in err and "\n" not in err


def test_a_random_motion_model_for_trying_the_pipeline(media):
  from playmate_jax import animate as anim
  from playmate_jax.errors import UserError
  model = anim.MotionModel.load("random:configs/stage1.py:tiny_live")
  assert model.config.model.audio_lookahead == 2 and model.workdir.startswith("random:")
  motion = model.generate(np.zeros(16000, np.float32), model.default_source())
  assert motion["exp"].shape == (25, 21, 3) and np.isfinite(motion["exp"]).all()
  with pytest.raises(UserError, match="random:CONFIG"):
    anim.MotionModel.load("random:configs/nothing.py")
