"""The service's web page in a real browser: headless Chromium (Debian's, driven by Playwright) against
`pipelines/serve.py`'s app on localhost, with a fake microphone that plays a speech file.

Chromium comes from the system (`apt-get install chromium`, as .ci/run does); where it is missing the tests skip,
and with PLAYMATE_REQUIRE_BROWSER=1 (set by .ci/run) that skip is a failure.
"""

from __future__ import annotations

import os
import shutil
import time

import cv2
import numpy as np
import pytest
import soundfile as sf

from tests.test_serve import build, listening
from tests import videos

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
  if os.environ.get("PLAYMATE_REQUIRE_BROWSER") == "1":
    raise RuntimeError("Chromium is not installed and PLAYMATE_REQUIRE_BROWSER=1: apt-get install chromium")
  pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
  from skimage import data
  folder = tmp_path_factory.mktemp("page_media")
  two = np.full((512, 1024, 3), 200, np.uint8)
  two[:, :512] = data.astronaut()
  two[56:456, 580:980] = cv2.resize(data.astronaut(), (400, 400), interpolation=cv2.INTER_AREA)
  cv2.imwrite(str(folder / "two.png"), cv2.cvtColor(two, cv2.COLOR_RGB2BGR))
  videos.write_photos(folder, ".jpg")
  speech = videos.tone_bursts(12, 16000)
  sf.write(folder / "speech.wav", speech, 16000)   # also the fake microphone's sound
  sf.write(folder / "short.wav", speech[:3 * 16000], 16000)
  return folder


@pytest.fixture(scope="module")
def server(stage2_run, live_run, tmp_path_factory):
  app, service = build(stage2_run, tmp_path_factory.mktemp("page_results"), live_checkpoint=live_run)
  assert service.ready.wait(300)
  with listening(app) as port:
    yield f"http://127.0.0.1:{port}", service
  service.stop()


@pytest.fixture(scope="module")
def browser(media):
  from playwright.sync_api import sync_playwright
  with sync_playwright() as p:
    b = p.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={media / 'speech.wav'}"])
    yield b
    b.close()


def test_a_recorded_voice_and_a_chosen_face_become_a_streamed_video_with_its_plot(server, browser, media):
  url, service = server
  page = browser.new_page()
  page.goto(url)
  page.wait_for_function("document.getElementById('emotion').options.length > 1")   # /v1/info: a stage-2 model
  page.set_input_files("#image", str(media / "two.png"))
  page.wait_for_function("document.getElementById('faces-note').textContent.startsWith('2 faces')")
  box = page.locator("#portrait-canvas").bounding_box()   # click the smaller face, on the right
  page.mouse.click(box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.35)
  page.click("#record")
  page.wait_for_function("document.getElementById('record-note').textContent === 'recording...'")
  time.sleep(3.0)
  page.click("#record")
  page.wait_for_function("document.getElementById('record-note').textContent === 'recorded'")
  page.select_option("#emotion", "happy")
  page.select_option("#pose", "sweep")
  page.click("#go")
  page.wait_for_selector("#download-video", timeout=120_000)
  page.wait_for_function("document.getElementById('plot').dataset.frames", timeout=20_000)
  frames = int(page.evaluate("document.getElementById('plot').dataset.frames"))
  assert 2.5 * 25 <= frames <= 4.5 * 25                         # about the 3 s recorded
  assert page.inner_text("#error") == ""
  assert page.evaluate("document.getElementById('video').readyState") >= 2
  job = page.evaluate("document.getElementById('download-video').href").split("/")[-2]
  settings = service.get(job).settings
  assert settings["face"] == 2 and settings["emotion"] == "happy" and settings["pose"] == "sweep"
  uploaded = os.listdir(service.store.folder(job))
  assert "audio.webm" in uploaded or "audio.ogg" in uploaded    # the recording itself was sent


def test_the_video_plays_while_it_is_made_and_errors_read_as_the_api_says(server, browser, media):
  url, service = server
  page = browser.new_page()
  page.goto(url)
  page.set_input_files("#image", str(media / "cat.jpg"))
  page.wait_for_function("document.getElementById('error').textContent.length > 0")
  assert page.inner_text("#error").startswith("No human face was found in cat.jpg")
  assert page.locator("#go").is_disabled()
  page.set_input_files("#image", str(media / "two.png"))
  page.wait_for_function("document.getElementById('faces-note').textContent.startsWith('2 faces')")
  page.set_input_files("#audio", str(media / "speech.wav"))
  page.click("#go")
  # 12 s of speech: the stream starts playing while later frames are still being rendered
  page.wait_for_function("document.getElementById('video').readyState >= 2", timeout=120_000)
  assert page.inner_text("#state").startswith("running")
  assert "/stream" in page.evaluate("document.getElementById('video').src")
  page.wait_for_selector("#download-video", timeout=120_000)
  # the streamed video ends up whole: the browser reads the stream's last fragments after the job is done
  page.wait_for_function("Math.abs(document.getElementById('video').duration - 12.0) < 0.3", timeout=30_000)


def test_live_mode_streams_a_file_and_the_microphone_and_shows_the_face(server, browser, media):
  url, service = server
  page = browser.new_page()
  said = []
  page.on("console", lambda m: said.append(m.text))
  page.on("pageerror", lambda e: said.append(str(e)))
  page.goto(url)
  page.set_input_files("#image", str(media / "two.png"))
  page.wait_for_function("document.getElementById('faces-note').textContent.startsWith('2 faces')")
  page.set_input_files("#audio", str(media / "short.wav"))
  page.wait_for_function("!document.getElementById('live-file').disabled")
  page.click("#live-file")      # 3 s of speech at real-time pace
  try:
    page.wait_for_function("document.getElementById('live-note').textContent.endsWith('done')", timeout=60_000)
  except Exception:
    raise AssertionError(f"no end of the live session; the page said {said}, the note {page.inner_text('#live-note')!r}"
                         f", the error {page.inner_text('#error')!r}")
  page.wait_for_function("document.getElementById('live-canvas').dataset.frames === '75'", timeout=10_000)
  assert page.inner_text("#error") == ""
  page.wait_for_function("!document.getElementById('live-mic').disabled")
  page.click("#live-mic")       # the fake microphone plays speech.wav
  page.wait_for_function("document.getElementById('live-canvas').dataset.frames > 0", timeout=30_000)
  time.sleep(2.0)
  page.click("#live-stop")
  page.wait_for_function("document.getElementById('live-note').textContent.endsWith('done')", timeout=60_000)
  assert int(page.evaluate("document.getElementById('live-canvas').dataset.frames")) >= 40
  pixels = page.evaluate("""() => { const c = document.getElementById('live-canvas');
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] + d[i + 1] + d[i + 2]; return s; }""")
  assert pixels > 0              # frames were drawn
  assert service.live_sessions == 0
