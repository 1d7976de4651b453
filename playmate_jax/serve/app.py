"""The HTTP API and the web page (FastAPI): what `pipelines/serve.py` serves.

    POST   /v1/animations               multipart image + audio (+ emotion, w_audio, w_emotion, pose, ddim_steps,
                                        paste_back, face, seed) -> 202 {"id": ...}
    GET    /v1/animations/{id}          {"state": queued|running|done|failed|cancelled, "progress": 0..1, "error"}
    GET    /v1/animations/{id}/video    the mp4            GET /v1/animations/{id}/motion   the npz
    GET    /v1/animations/{id}/stream   the video while it is made (fragmented MP4), then the mp4
    GET    /v1/animations/{id}/curves   head pose and mouth opening per frame (JSON), for the page's plot
    DELETE /v1/animations/{id}          cancel (or remove a finished job)
    WS     /v1/live                     live: a start message (JSON: the portrait, the rate), then 16-bit PCM chunks
                                        in; frames out as they are rendered (see `live`)
    POST   /v1/faces                    the faces of a portrait (boxes, largest first), for choosing one
    GET    /v1/info                     the model: stage, emotions, defaults, limits
    GET    /                            the web page       GET /docs   the OpenAPI page (served locally)

Every refusal is a 4xx with {"error": "one sentence"}; user input never causes a 5xx. With a token, every /v1
request must carry `Authorization: Bearer TOKEN`.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import os
import re
import shutil
import struct
import tempfile
import time
from typing import Annotated, Literal

import numpy as np
from fastapi import Depends, File, Form, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from playmate_jax import motion as motion_lib
from playmate_jax.errors import UserError
from playmate_jax.face import crop as crop_lib
from playmate_jax.face import finder as face_finder
from playmate_jax.serve import jobs as jobs_lib

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
CHUNK = 1 << 20


class ApiError(Exception):
  """A refusal: an HTTP status and one sentence."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def create_app(service: jobs_lib.Service, *, token: str | None = None, max_upload_mb: float = 50.0):
  """The FastAPI app over a started (or starting) `Service`."""
  app = FastAPIOffline(title="playmate-jax", version="1", description=__doc__.split("\n\n")[0],
                       docs_url="/docs", redoc_url=None)
  limit = int(max_upload_mb * (1 << 20))

  def authorized(request: Request) -> None:
    if token is None:
      return
    given = request.headers.get("authorization") or f"Bearer {request.query_params.get('token', '')}"
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):   # ?token= for <video src> and links
      raise ApiError(401, "This service needs its token: send the header 'Authorization: Bearer TOKEN'.")

  auth = [Depends(authorized)]

  @app.exception_handler(ApiError)
  async def _api_error(request, e: ApiError):
    return JSONResponse({"error": str(e)}, status_code=e.status)

  @app.exception_handler(UserError)
  async def _user_error(request, e: UserError):
    status = 429 if isinstance(e, jobs_lib.QueueFull) else 503 if isinstance(e, jobs_lib.Unavailable) else 400
    return JSONResponse({"error": str(e)}, status_code=status)

  @app.exception_handler(RequestValidationError)
  async def _invalid(request, e: RequestValidationError):
    first = e.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ())[1:]) or "the request"
    if first.get("type") == "missing":
      message = f"The request lacks {field}; see /docs for the fields this endpoint takes."
    else:
      message = f"{field}: {first.get('msg', 'invalid')}; see /docs for what this field takes."
    return JSONResponse({"error": message}, status_code=422)

  @app.exception_handler(HTTPException)
  async def _http(request, e: HTTPException):
    message = e.detail if isinstance(e.detail, str) else "Bad request."
    if e.status_code == 404 and message == "Not Found":
      message = f"There is nothing at {request.url.path}; see /docs for the endpoints."
    return JSONResponse({"error": message}, status_code=e.status_code)

  @app.middleware("http")
  async def _size_limit(request: Request, call_next):
    length = request.headers.get("content-length")
    if request.method == "POST" and length and length.isdigit() and int(length) > 2 * limit + (1 << 20):
      return JSONResponse({"error": f"The upload is {int(length) / (1 << 20):.0f} MB, over this service's limit "
                                    f"of {max_upload_mb:g} MB a file; send a shorter recording or a smaller "
                                    "photo."}, status_code=413)
    return await call_next(request)

  # --- the page and the model ----------------------------------------------------------------------------------

  @app.get("/", response_class=HTMLResponse, include_in_schema=False)
  def page():
    with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as f:
      return f.read()

  @app.get("/favicon.ico", include_in_schema=False)
  def favicon():
    return Response(status_code=204)

  @app.get("/static/{name}", include_in_schema=False)
  def static(name: str):
    path = os.path.join(STATIC, os.path.basename(name))
    if not os.path.isfile(path):
      raise ApiError(404, f"There is no file {name} here.")
    return FileResponse(path)

  @app.get("/v1/info", dependencies=auth, summary="The model and the service's limits")
  def info():
    model = service.animator.model
    sample = model.config.sample
    return dict(stage=model.stage, emotions=list(motion_lib.EMOTIONS) if model.stage == 2 else [],
                pose_modes=["generated", "fixed", "sweep"], fps=25, window=int(model.config.data.window),
                defaults=dict(w_audio=float(sample.w_audio), w_emotion=float(sample.w_emotion),
                              ddim_steps=int(sample.ddim_steps)),
                max_upload_mb=max_upload_mb, ready=service.ready.is_set(), max_batch=service.max_batch,
                live=service.live_model is not None,
                live_lookahead=None if service.live_model is None else
                int(service.live_model.config.model.audio_lookahead))

  @app.post("/v1/faces", dependencies=auth, summary="The faces found in a portrait, largest first")
  def faces(image: Annotated[UploadFile, File(description="the portrait")]):
    with tempfile.TemporaryDirectory(dir=service.store.root, prefix=".faces-") as folder:
      path = _save_upload(image, folder, "image", max_upload_mb)
      pixels = crop_lib.load_image(path)
      found = face_finder.finder(service.animator.face_models).find(pixels)
      if not found:
        raise UserError(f"No human face was found in {image.filename or 'the image'}; use a photo of a person "
                        "whose face is clearly visible (a face turned away, an animal or a drawing is not animated).")
      return dict(width=int(pixels.shape[1]), height=int(pixels.shape[0]),
                  faces=[dict(box=[round(float(v), 1) for v in f.box], score=round(float(f.score), 3))
                         for f in found])

  # --- animations -----------------------------------------------------------------------------------------------

  @app.post("/v1/animations", dependencies=auth, status_code=202, summary="Submit a portrait and speech")
  def submit(image: Annotated[UploadFile, File(description="the portrait: a photo of a person")],
             audio: Annotated[UploadFile, File(description="the speech: wav, flac, mp3, m4a, ogg, webm, or a video")],
             emotion: Annotated[str | None, Form(description="stage 2: angry, contempt, disgusted, fear, happy, "
                                                             "neutral, sad or surprised")] = None,
             w_audio: Annotated[float | None, Form(description="audio guidance weight")] = None,
             w_emotion: Annotated[float | None, Form(description="emotion guidance weight")] = None,
             pose: Annotated[Literal["generated", "fixed", "sweep"], Form()] = "generated",
             ddim_steps: Annotated[int | None, Form(ge=1, le=1000, description="DDIM steps")] = None,
             paste_back: Annotated[bool, Form(description="paste the face back into the full photo")] = False,
             face: Annotated[int | None, Form(ge=1, description="which face (1 = the largest)")] = None,
             seed: Annotated[int, Form()] = 0):
    job_id = service.new_folder()
    folder = service.store.folder(job_id)
    try:
      image_path = _save_upload(image, folder, "image", max_upload_mb)
      audio_path = _save_upload(audio, folder, "audio", max_upload_mb)
    except BaseException:
      _rmtree(folder)
      raise
    settings = dict(emotion=emotion or None, w_audio=w_audio, w_emotion=w_emotion, pose=pose,
                    ddim_steps=ddim_steps, paste_back=paste_back, face=face, seed=seed)
    try:
      record = service.submit(job_id, image_path, audio_path, settings)
    except UserError as e:   # the sentence names the uploaded file, not where the service put it
      message = str(e).replace(image_path, image.filename or "the image").replace(audio_path, audio.filename or
                                                                                    "the audio")
      raise type(e)(message.replace("--face ", "face ").replace("--pose", "pose")) from None
    return JSONResponse({"id": record.id, "state": record.state}, status_code=202)

  def record_of(job_id: str) -> jobs_lib.Record:
    record = service.get(job_id) if re.fullmatch(r"[0-9a-f]{1,64}", job_id) else None
    if record is None:
      raise ApiError(404, f"There is no animation {job_id}; it never existed, or it was removed to make room.")
    return record

  def finished_file(job_id: str, name: str, what: str) -> str:
    record = record_of(job_id)
    if record.state != "done":
      raise ApiError(409, f"Animation {job_id} is {record.state}; its {what} exists once it is done.")
    return service.store.path(job_id, name)

  @app.get("/v1/animations/{job_id}", dependencies=auth, summary="State and progress")
  def status(job_id: str):
    return record_of(job_id).public()

  @app.get("/v1/animations/{job_id}/video", dependencies=auth, summary="The mp4", response_class=FileResponse)
  def video(job_id: str):
    return FileResponse(finished_file(job_id, jobs_lib.VIDEO_FILE, "video"), media_type="video/mp4",
                        filename=f"{job_id}.mp4")

  @app.get("/v1/animations/{job_id}/motion", dependencies=auth, summary="The generated motion (npz)",
           response_class=FileResponse)
  def motion(job_id: str):
    return FileResponse(finished_file(job_id, jobs_lib.MOTION_FILE, "motion"), media_type="application/octet-stream",
                        filename=f"{job_id}.motion.npz")

  @app.get("/v1/animations/{job_id}/curves", dependencies=auth, summary="Head pose and mouth opening per frame")
  def curves(job_id: str):
    with np.load(finished_file(job_id, jobs_lib.MOTION_FILE, "motion")) as m:
      mouth = np.asarray(motion_lib.mouth_opening(m["exp"]))
      out = {k: np.round(m[k].astype(float), 3).tolist() for k in ("pitch", "yaw", "roll")}
    return dict(out, fps=25, mouth=np.round(mouth.astype(float), 5).tolist())

  @app.get("/v1/animations/{job_id}/stream", dependencies=auth, summary="The video as it is made (fragmented MP4)")
  async def stream(job_id: str):
    record = record_of(job_id)
    if record.state == "done":
      return FileResponse(service.store.path(job_id, jobs_lib.VIDEO_FILE), media_type="video/mp4")
    if record.state in jobs_lib.FINISHED:
      raise ApiError(409, f"Animation {job_id} is {record.state}; there is nothing to stream.")
    return StreamingResponse(_tail(service, job_id), media_type="video/mp4",
                             headers={"Cache-Control": "no-store"})

  @app.delete("/v1/animations/{job_id}", dependencies=auth, summary="Cancel (or remove a finished animation)")
  def cancel(job_id: str):
    record = record_of(job_id)
    service.cancel(job_id)
    return record.public()

  @app.websocket("/v1/live")
  async def live(ws: WebSocket):
    """Live animation. The client sends, in order:
      1. a JSON text message {"image": base64 of the portrait file, "rate": 16000, and optionally "emotion",
         "w_audio", "w_emotion", "face", "seed", "quality" (JPEG, 85)};
      2. binary messages of mono 16-bit little-endian PCM at that rate, of any length, as the speech comes;
      3. the text message {"type": "end"} when the speech ends.
    The service answers {"type": "ready", "fps": 25, "window", "lookahead", "width", "height"} once the portrait is
    ready, then one binary message per frame as soon as it is rendered: a 4-byte big-endian frame index, the
    frame's latency in ms as a 4-byte big-endian float (from the arrival of the last sample of its audio to now),
    then the JPEG; after "end", the remaining frames and {"type": "end", "frames": N}. A mistake is
    {"type": "error", "error": "one sentence"}, and the connection closes. A client that goes away frees its
    session."""
    given = ws.headers.get("authorization") or f"Bearer {ws.query_params.get('token', '')}"
    await ws.accept()
    if token is not None and not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
      await _ws_error(ws, "This service needs its token: connect with ?token=TOKEN or 'Authorization: Bearer TOKEN'.")
      return
    session, quality = None, 85
    try:
      start = await ws.receive_text()
      try:
        settings = json.loads(start)
        image = base64.b64decode(settings.pop("image"), validate=True)
        quality = int(settings.pop("quality", 85))
      except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError("The first message must be JSON with the portrait as base64 in \"image\" and the sample rate "
                        "in \"rate\"; see /docs.") from None
      with tempfile.TemporaryDirectory(dir=service.store.root, prefix=".live-") as folder:
        path = os.path.join(folder, "portrait")
        with open(path, "wb") as f:
          f.write(image)
        session = await asyncio.to_thread(service.open_live, path, "the portrait", settings)
      size = service.animator.renderer.render_size
      await ws.send_json(dict(type="ready", fps=25, window=session.window, lookahead=session.lookahead,
                              width=size, height=size))
      while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
          return
        if message.get("bytes") is not None:
          frames = await asyncio.to_thread(session.push, message["bytes"])
          await _send_frames(ws, frames, quality)
          continue
        try:
          said = json.loads(message.get("text") or "")
        except ValueError:
          said = None
        if not isinstance(said, dict) or said.get("type") != "end":
          raise UserError("A text message during a live session must be {\"type\": \"end\"}; send the speech as "
                          "binary 16-bit PCM.")
        frames = await asyncio.to_thread(session.finish)
        await _send_frames(ws, frames, quality)
        await ws.send_json(dict(type="end", frames=session.frames_out))
        await ws.close()
        return
    except UserError as e:
      await _ws_error(ws, str(e))
    except WebSocketDisconnect:
      pass
    finally:
      if session is not None:
        service.close_live()

  return app


async def _send_frames(ws, frames, quality: int) -> None:
  for f in frames:
    jpeg = await asyncio.to_thread(f.jpeg, quality)
    latency = (time.perf_counter() - f.audio_arrived) * 1e3
    await ws.send_bytes(struct.pack(">If", f.index, latency) + jpeg)


async def _ws_error(ws, message: str) -> None:
  try:
    await ws.send_json(dict(type="error", error=message))
    await ws.close(code=1008)
  except (WebSocketDisconnect, RuntimeError):
    pass


async def _tail(service: jobs_lib.Service, job_id: str):
  """The stream file's bytes as they are written, until the job has finished and all of it was sent."""
  path = service.store.path(job_id, jobs_lib.STREAM_FILE)
  f = None
  try:
    while f is None:   # queued: the file appears when the job's first frame is encoded
      record = service.get(job_id)
      if record is None or record.state in jobs_lib.FINISHED:
        if record is not None and record.state == "done":
          f = open(service.store.path(job_id, jobs_lib.VIDEO_FILE), "rb")
          break
        return
      try:
        f = open(path, "rb")
      except FileNotFoundError:
        await asyncio.sleep(0.05)
    while True:
      data = f.read(CHUNK)
      if data:
        yield data
        continue
      record = service.get(job_id)
      if record is None or record.state in jobs_lib.FINISHED:
        rest = f.read()
        if rest:
          yield rest
        return
      await asyncio.sleep(0.05)
  finally:
    if f is not None:
      f.close()


_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,5}$")


def _save_upload(upload: UploadFile, folder: str, name: str, limit_mb: float) -> str:
  """An uploaded file written into the job's folder (keeping its suffix, which helps decoders); ApiError 413 over
  the size limit, 400 when empty."""
  suffix = _SUFFIX.search(upload.filename or "")
  path = os.path.join(folder, name + (suffix.group(0).lower() if suffix else ""))
  size, limit = 0, int(limit_mb * (1 << 20))
  with open(path, "wb") as out:
    while chunk := upload.file.read(CHUNK):
      size += len(chunk)
      if size > limit:
        raise ApiError(413, f"{upload.filename or name} is over this service's limit of {limit_mb:g} MB a "
                            "file; send a shorter recording or a smaller photo.")
      out.write(chunk)
  if size == 0:
    raise ApiError(400, f"{upload.filename or name} is empty (0 bytes); send the file itself.")
  return path


def _rmtree(folder: str) -> None:
  shutil.rmtree(folder, ignore_errors=True)
