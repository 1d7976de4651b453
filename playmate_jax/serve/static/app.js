// The page of `pipelines/serve.py`: portrait (faces shown, one chosen), speech (a file or the microphone),
// controls, then the job's progress, its video as it streams, the downloads and a plot of the motion.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, audio: null, faces: [], face: 1, job: null, timer: null, bitmap: null, recorder: null };
const TOKEN = new URLSearchParams(location.search).get("token");

function headers() { return TOKEN ? { Authorization: "Bearer " + TOKEN } : {}; }

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  const body = await response.json().catch(() => ({ error: `The service answered ${response.status}.` }));
  if (!response.ok) throw new Error(body.error || `The service answered ${response.status}.`);
  return body;
}

function showError(message) { $("error").textContent = message || ""; }

function ready() {
  $("go").disabled = !(state.image && state.audio && state.faces.length);
  const idle = !live.ws && state.image && state.faces.length && state.live;
  $("live-mic").disabled = !idle;
  $("live-file").disabled = !(idle && state.audio);
}

async function loadInfo() {
  try {
    const info = await api("/v1/info");
    state.live = info.live;
    if (!info.live) $("live-about").textContent = "This service has no live model (start it with --live-checkpoint).";
    $("model").textContent = `stage-${info.stage} model, ${info.defaults.ddim_steps} DDIM steps`;
    if (!info.emotions.length) $("emotion-box").style.display = "none";
    for (const name of info.emotions) $("emotion").add(new Option(name, name));
    $("w-emotion").value = info.defaults.w_emotion;
    $("w-emotion-value").textContent = info.defaults.w_emotion;
  } catch (e) { showError(e.message); }
}

// --- the portrait and its faces ----------------------------------------------------------------------------------

async function pickImage(file) {
  showError("");
  state.image = file; state.faces = []; state.face = 1; ready();
  $("faces-note").textContent = "finding faces...";
  state.bitmap = await createImageBitmap(file, { imageOrientation: "from-image" }).catch(() => null);
  const form = new FormData();
  form.append("image", file);
  try {
    const found = await api("/v1/faces", { method: "POST", body: form });
    state.faces = found.faces;
    state.size = [found.width, found.height];
    $("faces-note").textContent = found.faces.length > 1
      ? `${found.faces.length} faces: click one to animate it (face 1, the largest, is chosen).`
      : "1 face found.";
  } catch (e) {
    $("faces-note").textContent = "";
    showError(e.message);
  }
  drawPortrait();
  ready();
}

function drawPortrait() {
  const canvas = $("portrait-canvas");
  if (!state.bitmap) { canvas.style.display = "none"; return; }
  const [w, h] = state.size || [state.bitmap.width, state.bitmap.height];
  canvas.width = w; canvas.height = h; canvas.style.display = "block";
  const g = canvas.getContext("2d");
  g.drawImage(state.bitmap, 0, 0, w, h);
  g.lineWidth = Math.max(2, w / 200);
  g.font = `${Math.max(14, w / 30)}px system-ui`;
  state.faces.forEach((f, i) => {
    const [x0, y0, x1, y1] = f.box;
    g.strokeStyle = i + 1 === state.face ? "#22dd55" : "#ffcc00";
    g.strokeRect(x0, y0, x1 - x0, y1 - y0);
    g.fillStyle = g.strokeStyle;
    g.fillText(String(i + 1), x0 + 4, y0 - 6);
  });
}

$("portrait-canvas").addEventListener("click", (event) => {
  const canvas = event.currentTarget, rect = canvas.getBoundingClientRect();
  const x = (event.clientX - rect.left) * canvas.width / rect.width;
  const y = (event.clientY - rect.top) * canvas.height / rect.height;
  const hit = state.faces.findIndex((f) => x >= f.box[0] && x <= f.box[2] && y >= f.box[1] && y <= f.box[3]);
  if (hit >= 0) { state.face = hit + 1; drawPortrait(); }
});

$("image").addEventListener("change", (e) => e.target.files[0] && pickImage(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files[0]) pickImage(e.dataTransfer.files[0]);
});

// --- speech: a file or the microphone ----------------------------------------------------------------------------

function setAudio(blob, name) {
  state.audio = new File([blob], name, { type: blob.type });
  const preview = $("audio-preview");
  preview.src = URL.createObjectURL(blob);
  preview.style.display = "block";
  ready();
}

$("audio").addEventListener("change", (e) => e.target.files[0] && setAudio(e.target.files[0], e.target.files[0].name));

$("record").addEventListener("click", async () => {
  if (state.recorder) { state.recorder.stop(); return; }
  showError("");
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const recorder = new MediaRecorder(stream);
    const parts = [];
    recorder.ondataavailable = (e) => parts.push(e.data);
    recorder.onstop = () => {
      stream.getTracks().forEach((t) => t.stop());
      state.recorder = null;
      $("record").textContent = "Record";
      $("record-note").textContent = "recorded";
      const type = recorder.mimeType || "audio/webm";
      setAudio(new Blob(parts, { type }), type.includes("ogg") ? "speech.ogg" : "speech.webm");
    };
    recorder.start();
    state.recorder = recorder;
    $("record").textContent = "Stop";
    $("record-note").textContent = "recording...";
  } catch (e) { showError("The microphone could not be opened: " + e.message); }
});

$("w-emotion").addEventListener("input", (e) => { $("w-emotion-value").textContent = e.target.value; });

// --- the job --------------------------------------------------------------------------------------------------------

$("go").addEventListener("click", async () => {
  showError("");
  const form = new FormData();
  form.append("image", state.image);
  form.append("audio", state.audio);
  form.append("pose", $("pose").value);
  form.append("face", String(state.face));
  form.append("paste_back", String($("paste-back").checked));
  if ($("emotion").value) {
    form.append("emotion", $("emotion").value);
    form.append("w_emotion", $("w-emotion").value);
  }
  $("go").disabled = true;
  $("downloads").textContent = "";
  clearPlot();
  try {
    const job = await api("/v1/animations", { method: "POST", body: form });
    state.job = job.id;
    state.streaming = false;
    $("cancel").disabled = false;
    poll();
  } catch (e) { showError(e.message); ready(); }
});

$("cancel").addEventListener("click", async () => {
  if (!state.job) return;
  try { await api(`/v1/animations/${state.job}`, { method: "DELETE" }); } catch (e) { showError(e.message); }
});

function withToken(path) { return TOKEN ? `${path}?token=${encodeURIComponent(TOKEN)}` : path; }

async function poll() {
  clearTimeout(state.timer);
  const id = state.job;
  let job;
  try { job = await api(`/v1/animations/${id}`); } catch (e) { showError(e.message); return; }
  $("progress").value = job.progress;
  $("state").textContent = `${job.state}` + (job.state === "running" ?
    ` - ${job.frames_done} of ${job.frames} frames` : job.state === "queued" ? " - waiting for the device" : "");
  if (job.state === "running" && !state.streaming && job.first_fragment) {
    state.streaming = true;   // the stream plays as it grows (a fragmented MP4)
    const video = $("video");
    video.src = withToken(`/v1/animations/${id}/stream`);
    video.play().catch(() => {});
  }
  if (job.state === "done") return finished(id);
  if (job.state === "failed" || job.state === "cancelled") {
    showError(job.error || `The animation was ${job.state}.`);
    $("cancel").disabled = true; ready();
    return;
  }
  state.timer = setTimeout(poll, 300);
}

async function finished(id) {
  $("cancel").disabled = true; ready();
  const video = $("video");
  if (!state.streaming) { video.src = withToken(`/v1/animations/${id}/video`); video.play().catch(() => {}); }
  $("downloads").innerHTML = "";
  for (const [what, label] of [["video", "Download the mp4"], ["motion", "Download the motion (npz)"]]) {
    const a = document.createElement("a");
    a.href = withToken(`/v1/animations/${id}/${what}`);
    a.textContent = label;
    a.id = `download-${what}`;
    a.download = "";
    $("downloads").appendChild(a);
  }
  try { plot(await api(`/v1/animations/${id}/curves`)); } catch (e) { showError(e.message); }
}

// --- the plot: pitch, yaw, roll (degrees, left axis) and mouth opening (right axis) over time --------------------

function clearPlot() { const c = $("plot"); c.getContext("2d").clearRect(0, 0, c.width, c.height); c.dataset.frames = ""; }

function plot(curves) {
  const canvas = $("plot"), g = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
  const pad = { l: 44, r: 54, t: 12, b: 26 };
  g.clearRect(0, 0, W, H);
  const n = curves.yaw.length, seconds = n / curves.fps;
  const angles = [...curves.pitch, ...curves.yaw, ...curves.roll];
  const lo = Math.min(-5, ...angles), hi = Math.max(5, ...angles);
  const mouthHi = Math.max(1e-6, ...curves.mouth), mouthLo = Math.min(0, ...curves.mouth);
  const x = (i) => pad.l + (W - pad.l - pad.r) * i / Math.max(1, n - 1);
  const y = (v, a, b) => pad.t + (H - pad.t - pad.b) * (1 - (v - a) / (b - a));
  g.strokeStyle = "#ccd"; g.fillStyle = "#445"; g.font = "12px system-ui"; g.lineWidth = 1;
  g.strokeRect(pad.l, pad.t, W - pad.l - pad.r, H - pad.t - pad.b);
  g.fillText(`${hi.toFixed(0)} deg`, 2, pad.t + 10); g.fillText(`${lo.toFixed(0)} deg`, 2, H - pad.b);
  g.fillText(`mouth`, W - pad.r + 6, pad.t + 10);
  g.fillText(`0 s`, pad.l, H - 8); g.fillText(`${seconds.toFixed(1)} s`, W - pad.r - 30, H - 8);
  const series = [["pitch", "#d9534f", lo, hi], ["yaw", "#2b59c3", lo, hi], ["roll", "#5cb85c", lo, hi],
                  ["mouth", "#f0ad4e", mouthLo, mouthHi]];
  series.forEach(([name, color, a, b], k) => {
    g.strokeStyle = color; g.lineWidth = name === "mouth" ? 2 : 1.5; g.beginPath();
    curves[name].forEach((v, i) => (i ? g.lineTo(x(i), y(v, a, b)) : g.moveTo(x(i), y(v, a, b))));
    g.stroke();
    g.fillStyle = color; g.fillText(name, pad.l + 8 + 60 * k, pad.t + 14);
  });
  canvas.dataset.frames = String(n);
}

// --- live: speech in as it is spoken (the microphone, or a file at real-time pace), frames back as they come -------

const live = { ws: null, context: null, stop: null, t0: 0, delay: 0.6, frames: 0, latencies: [], sent: 0, done: false };

function fileAsBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",")[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function toInt16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) out[i] = Math.max(-1, Math.min(1, samples[i])) * 32767;
  return out.buffer;
}

function liveNote(text) {
  const sorted = [...live.latencies].sort((a, b) => a - b);
  const median = sorted.length ? sorted[Math.floor(sorted.length / 2)] : 0;
  // Frames still being decoded may report after the session's end: the note says "done" from then on.
  $("live-note").textContent = text || `${live.frames} frames, median latency ${median.toFixed(0)} ms` +
    (live.done ? " - done" : "");
  $("live-canvas").dataset.frames = String(live.frames);
}

async function liveStart(fromFile) {
  showError("");
  $("live-mic").disabled = $("live-file").disabled = true;   // one session at a time from this page
  const context = new AudioContext();
  live.context = context; live.frames = 0; live.latencies = []; live.sent = 0; live.done = false;
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/live` +
    (TOKEN ? `?token=${encodeURIComponent(TOKEN)}` : "");
  // The start message is ready before the socket exists: an open event before its handler is set would be lost.
  const settings = { image: await fileAsBase64(state.image), rate: context.sampleRate, face: state.face };
  if ($("emotion").value) { settings.emotion = $("emotion").value; settings.w_emotion = Number($("w-emotion").value); }
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  live.ws = ws; ready();
  $("live-stop").disabled = false;
  ws.onopen = () => ws.send(JSON.stringify(settings));
  ws.onmessage = async (event) => {
    if (typeof event.data !== "string") return drawLiveFrame(event.data);
    const said = JSON.parse(event.data);
    if (said.type === "ready") { liveNote("live"); await (fromFile ? streamFile(context, ws) : streamMic(context, ws)); }
    else if (said.type === "error") { showError(said.error); liveEnd(); }
    else if (said.type === "end") { live.done = true; liveNote(); liveEnd(); }
  };
  ws.onclose = () => liveEnd();
}

async function streamMic(context, ws) {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const source = context.createMediaStreamSource(stream);
  const processor = context.createScriptProcessor(1024, 1, 1);
  processor.onaudioprocess = (e) => { if (ws.readyState === 1) ws.send(toInt16(e.inputBuffer.getChannelData(0))); };
  const delay = context.createDelay(2.0);   // the voice played back as late as the face: in sync
  delay.delayTime.value = live.delay;
  source.connect(processor); processor.connect(context.destination);
  source.connect(delay); delay.connect(context.destination);
  live.t0 = performance.now();
  live.stop = () => {
    processor.disconnect(); source.disconnect(); stream.getTracks().forEach((t) => t.stop());
    if (ws.readyState === 1) ws.send(JSON.stringify({ type: "end" }));
  };
}

async function streamFile(context, ws) {
  const buffer = await context.decodeAudioData(await state.audio.arrayBuffer());
  const mono = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const data = buffer.getChannelData(c);
    for (let i = 0; i < data.length; i++) mono[i] += data[i] / buffer.numberOfChannels;
  }
  const player = context.createBufferSource();
  player.buffer = buffer; player.connect(context.destination);
  player.start(context.currentTime + live.delay);
  const chunk = Math.round(buffer.sampleRate * 0.02);
  live.t0 = performance.now();
  let sent = 0;
  const timer = setInterval(() => {   // real-time pace: what 20 ms ticks have made due
    const due = Math.min(mono.length, Math.round((performance.now() - live.t0) / 1000 * buffer.sampleRate));
    while (sent < due && ws.readyState === 1) {
      ws.send(toInt16(mono.subarray(sent, Math.min(due, sent + chunk))));
      sent = Math.min(due, sent + chunk);
    }
    if (sent >= mono.length) { clearInterval(timer); if (ws.readyState === 1) ws.send(JSON.stringify({ type: "end" })); }
  }, 20);
  live.stop = () => { clearInterval(timer); player.stop(); if (ws.readyState === 1) ws.send(JSON.stringify({ type: "end" })); };
}

async function drawLiveFrame(data) {
  const view = new DataView(data);
  const index = view.getUint32(0), latency = view.getFloat32(4);
  const bitmap = await createImageBitmap(new Blob([data.slice(8)], { type: "image/jpeg" }));
  live.frames += 1; live.latencies.push(latency);
  $("live-canvas").dataset.frames = String(live.frames);
  const due = live.t0 + (live.delay + index / 25) * 1000;   // shown when its sound plays
  setTimeout(() => {
    const canvas = $("live-canvas");
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  }, Math.max(0, due - performance.now()));
  if (live.frames % 5 === 0) liveNote();
}

function liveEnd() {
  if (live.ws && live.ws.readyState <= 1 && live.stop === null) live.ws.close();
  live.ws = null; live.stop = null;
  $("live-stop").disabled = true;
  ready();
}

$("live-mic").addEventListener("click", () => liveStart(false));
$("live-file").addEventListener("click", () => liveStart(true));
$("live-stop").addEventListener("click", () => { if (live.stop) { const stop = live.stop; live.stop = null; stop(); } });

loadInfo();
