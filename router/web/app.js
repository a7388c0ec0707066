// The open-speech page: upload a file, transcribe the microphone live, manage models.
// Plain DOM and fetch against the router's own API (same origin); no build step.
import { CHUNK_SAMPLES, Pcm16Resampler, RATE } from "./pcm.js";

const $ = (selector, root = document) => root.querySelector(selector);
const KEY_STORAGE = "open-speech.api-key";

// ---- the API key and requests ------------------------------------------------------------------
const keyInput = $("#api-key");
keyInput.value = localStorage.getItem(KEY_STORAGE) ?? "";
keyInput.addEventListener("input", () => localStorage.setItem(KEY_STORAGE, keyInput.value.trim()));
keyInput.addEventListener("change", () => refreshModels());

const apiKey = () => keyInput.value.trim();

class ApiError extends Error {}

// fetch() with the key; a non-2xx answer throws with the server's message (OpenAI's error shape).
async function api(path, options = {}) {
  const headers = { ...options.headers };
  if (apiKey()) headers.Authorization = `Bearer ${apiKey()}`;
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      message = body.error?.message ?? body.detail ?? message;
    } catch {
      // not JSON: keep the status line
    }
    throw new ApiError(message);
  }
  return response;
}

function say(element, text, isError = false) {
  element.textContent = text;
  element.classList.toggle("error", isError);
  element.setAttribute("role", isError ? "alert" : "status");
}

// Lines of a streamed body as they arrive (NDJSON, or SSE's "data: ..." lines).
async function* lines(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const parts = buffer.split("\n");
    buffer = parts.pop();
    yield* parts;
  }
  if (buffer) yield buffer;
}

// Seconds as m:ss.ss (h:mm:ss.ss from an hour).
function clock(seconds) {
  const hundredths = Math.round(seconds * 100);
  const h = Math.floor(hundredths / 360000);
  const m = Math.floor((hundredths % 360000) / 6000);
  const s = ((hundredths % 6000) / 100).toFixed(2).padStart(5, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    td.append(cell);
    tr.append(td);
  }
  return tr;
}

// ---- tabs (WAI-ARIA tabs pattern; the hash keeps the view on reload) ------------------------------
const tabs = [...document.querySelectorAll('[role="tab"]')];

function select(tab) {
  for (const t of tabs) {
    const selected = t === tab;
    t.setAttribute("aria-selected", String(selected));
    t.tabIndex = selected ? 0 : -1;
    document.getElementById(t.getAttribute("aria-controls")).hidden = !selected;
  }
  history.replaceState(null, "", `#${tab.getAttribute("aria-controls")}`);
}

for (const tab of tabs) {
  tab.addEventListener("click", () => select(tab));
  tab.addEventListener("keydown", (event) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (!step) return;
    const next = tabs[(tabs.indexOf(tab) + step + tabs.length) % tabs.length];
    select(next);
    next.focus();
  });
}
select(tabs.find((t) => `#${t.getAttribute("aria-controls")}` === location.hash) ?? tabs[0]);

// ---- models: the selects and the Models view -------------------------------------------------------
const modelsBody = $("#models-table tbody");
const modelsStatus = $("#models-status");
const notice = $("#notice");
const pulls = new Map(); // model id -> {status, completed, total} while a pull runs

async function refreshModels() {
  let models, loaded;
  try {
    [models, loaded] = await Promise.all([
      api("v1/models").then((r) => r.json()),
      api("api/ps").then((r) => r.json()),
    ]);
  } catch (error) {
    notice.textContent = `Cannot list models: ${error.message}`;
    notice.hidden = false;
    return;
  }
  notice.hidden = true;
  const status = new Map(loaded.models.map((m) => [m.id, m.status]));
  // /v1/models lists aliases as ids too; rows and choices are one per model, its aliases beside it.
  const own = models.data.filter((m) => (m.root ?? m.id) === m.id);
  fillSelects(own.filter((m) => m.capabilities?.transcribe !== false), status); // not the diarizers
  modelsBody.replaceChildren(...own.map((m) => modelRow(m, status.get(m.id))));
  refreshHealth();
}

function fillSelects(models, status) {
  for (const select of document.querySelectorAll(".model-select")) {
    const current = select.value;
    select.replaceChildren(
      ...models.map((m) => new Option(status.has(m.id) ? `${m.id} (loaded)` : m.id, m.id)),
    );
    select.value = current || models.find((m) => status.has(m.id))?.id || models[0]?.id || "";
  }
}

function modelRow(model, loadedStatus) {
  const name = document.createElement("span");
  name.textContent = model.id;
  name.title = model.description ?? "";
  const id = document.createElement("div");
  id.append(name);
  if (model.aliases.length) {
    const aliases = document.createElement("small");
    aliases.textContent = ` also ${model.aliases.join(", ")}`;
    id.append(aliases);
  }
  const actions = document.createElement("div");
  actions.className = "actions";
  if (loadedStatus) {
    actions.append(button(`Unload`, model.id, () => unload(model.id)));
  } else {
    actions.append(button(`Load`, model.id, () => load(model.id)));
  }
  if (!model.downloaded) actions.append(button("Pull", model.id, () => pullModel(model.id)));
  const pull = pulls.get(model.id);
  if (pull) actions.append(pullProgress(model.id, pull));
  const tr = row([id, model.family, model.downloaded ? "yes" : "no", loadedStatus ?? "no", actions]);
  tr.dataset.model = model.id;
  return tr;
}

function button(label, model, action) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.setAttribute("aria-label", `${label} ${model}`);
  b.addEventListener("click", async () => {
    for (const other of b.parentElement.querySelectorAll("button")) other.disabled = true;
    await action();
  });
  return b;
}

function pullProgress(model, { status, completed, total }) {
  const box = document.createElement("div");
  box.className = "pull";
  const bar = document.createElement("progress");
  bar.setAttribute("aria-label", `Pull progress of ${model}`);
  bar.max = total || 1;
  bar.value = completed || 0;
  const text = document.createElement("span");
  text.textContent = total ? `${status} ${Math.floor((100 * completed) / total)} %` : status;
  box.append(bar, text);
  return box;
}

function showPull(model) {
  const tr = modelsBody.querySelector(`tr[data-model="${CSS.escape(model)}"]`);
  if (!tr) return;
  const actions = tr.querySelector(".actions");
  actions.querySelector(".pull")?.remove();
  actions.append(pullProgress(model, pulls.get(model)));
}

function setLoadedCell(model, text) {
  const tr = modelsBody.querySelector(`tr[data-model="${CSS.escape(model)}"]`);
  if (tr) tr.cells[3].textContent = text;
}

async function load(model) {
  setLoadedCell(model, "loading…");
  say(modelsStatus, `Loading ${model}…`);
  try {
    await api(`api/ps/${encodeURIComponent(model)}`, { method: "POST" });
    say(modelsStatus, `Loaded ${model}.`);
  } catch (error) {
    say(modelsStatus, `Cannot load ${model}: ${error.message}`, true);
  }
  await refreshModels();
}

async function unload(model) {
  setLoadedCell(model, "unloading…");
  try {
    await api(`api/ps/${encodeURIComponent(model)}`, { method: "DELETE" });
    say(modelsStatus, `Unloaded ${model}.`);
  } catch (error) {
    say(modelsStatus, `Cannot unload ${model}: ${error.message}`, true);
  }
  await refreshModels();
}

async function pullModel(model) {
  pulls.set(model, { status: "starting", completed: 0, total: 0 });
  showPull(model);
  let outcome = null;
  try {
    const response = await api(`api/pull/${encodeURIComponent(model)}`, { method: "POST" });
    for await (const line of lines(response)) {
      if (!line.trim()) continue;
      const event = JSON.parse(line);
      if (event.status === "error") throw new ApiError(event.error);
      if (event.status === "success") outcome = `Pulled ${model}.`;
      pulls.set(model, { ...pulls.get(model), ...event });
      showPull(model);
    }
    if (!outcome) throw new ApiError("the download stopped before it finished");
    say(modelsStatus, outcome);
  } catch (error) {
    say(modelsStatus, `Cannot pull ${model}: ${error.message}`, true);
  }
  pulls.delete(model);
  await refreshModels();
}

async function refreshHealth() {
  const health = $("#models-health");
  try {
    const body = await (await fetch("health")).json();
    const states = Object.entries(body.models).map(([id, state]) => `${id} ${state}`);
    health.textContent = `Server ${body.status}${states.length ? ` · ${states.join(", ")}` : ""}`;
  } catch {
    health.textContent = "Server unreachable";
  }
}

$("#models-refresh").addEventListener("click", () => refreshModels());
for (const tab of tabs) tab.addEventListener("click", () => tab.id === "tab-models" && refreshModels());

// ---- upload ------------------------------------------------------------------------------------------
const form = $("#upload-form");
const formatSelect = $("#upload-format");
const streamBox = $("#upload-stream");
const uploadStatus = $("#upload-status");
const result = $("#upload-result");
const textOut = $("#upload-text");
const segmentsTable = $("#upload-segments");
const words = $("#upload-words");
const bodyOut = $("#upload-body");

function syncUploadOptions() {
  // Timestamps exist in verbose_json only, speakers in it and in srt and vtt; a stream is text events whatever
  // the format. Disabled fields are not sent.
  formatSelect.disabled = streamBox.checked;
  $("#upload-granularities").disabled = streamBox.checked || formatSelect.value !== "verbose_json";
  $("#upload-diarize").disabled = streamBox.checked || !["verbose_json", "srt", "vtt"].includes(formatSelect.value);
}
formatSelect.addEventListener("change", syncUploadOptions);
streamBox.addEventListener("change", syncUploadOptions);
syncUploadOptions();

function clearResult() {
  result.hidden = false;
  textOut.textContent = "";
  textOut.hidden = false;
  segmentsTable.hidden = true;
  words.hidden = true;
  bodyOut.hidden = true;
  bodyOut.textContent = "";
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const data = new FormData(form);
  if (!data.get("language")) data.delete("language");
  if (streamBox.checked || formatSelect.value !== "verbose_json") data.delete("timestamp_granularities[]");
  if (streamBox.checked) data.delete("response_format");
  const submit = $("button[type=submit]", form);
  submit.disabled = true;
  clearResult();
  result.hidden = true;
  say(uploadStatus, "Transcribing…");
  const started = performance.now();
  try {
    const response = await api("v1/audio/transcriptions", { method: "POST", body: data });
    result.hidden = false;
    if (streamBox.checked) await showStream(response);
    else await showBody(response, formatSelect.value);
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    say(uploadStatus, `Done in ${seconds} s.`);
  } catch (error) {
    say(uploadStatus, `Transcription failed: ${error.message}`, true);
  } finally {
    submit.disabled = false;
  }
});

async function showStream(response) {
  textOut.classList.add("interim");
  for await (const line of lines(response)) {
    if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
    const event = JSON.parse(line.slice(6));
    if (event.error) throw new ApiError(event.error.message);
    if (event.type === "transcript.text.delta") textOut.textContent += event.delta;
    if (event.type === "transcript.text.done") textOut.textContent = event.text;
  }
  textOut.classList.remove("interim");
}

async function showBody(response, format) {
  if (format !== "verbose_json") {
    textOut.hidden = true;
    bodyOut.hidden = false;
    const body = await response.text();
    bodyOut.textContent = format === "json" ? JSON.stringify(JSON.parse(body), null, 2) : body;
    return;
  }
  const body = await response.json();
  textOut.textContent = body.text;
  if (body.segments?.length) {
    segmentsTable.hidden = false;
    const speakers = body.segments.some((s) => s.speaker);
    $("#upload-speaker").hidden = !speakers;
    $("tbody", segmentsTable).replaceChildren(
      ...body.segments.map((s) => row([clock(s.start), clock(s.end), ...(speakers ? [s.speaker] : []), s.text.trim()])),
    );
  }
  if (body.words?.length) {
    words.hidden = false;
    $("tbody", words).replaceChildren(...body.words.map((w) => row([clock(w.start), clock(w.end), w.word.trim()])));
  }
}

// ---- live microphone over the Realtime WebSocket -------------------------------------------------------
const liveStatus = $("#live-status");
const transcript = $("#live-transcript");
const startButton = $("#live-start");
const stopButton = $("#live-stop");
const level = $("#live-level");
let live = null; // {ws, stream, context, open: Set of item ids not yet completed, current, stopping}

function item(id) {
  let li = transcript.querySelector(`li[data-item="${CSS.escape(id)}"]`);
  if (!li) {
    li = document.createElement("li");
    li.dataset.item = id;
    li.className = "interim";
    transcript.append(li);
  }
  return li;
}

async function microphone() {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error("the microphone needs a secure page (https, or http://localhost)");
  }
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
  });
  // Ask for 24 kHz so that the browser resamples; a browser that keeps its own rate is resampled in pcm.js.
  let context = new AudioContext({ sampleRate: RATE });
  let source;
  try {
    source = context.createMediaStreamSource(stream);
  } catch {
    await context.close();
    context = new AudioContext();
    source = context.createMediaStreamSource(stream);
  }
  return { stream, context, source };
}

// Calls `send(Int16Array)` with each 50 ms of 24 kHz pcm16 until the context closes.
async function capture({ context, source }, send) {
  if (context.audioWorklet) {
    await context.audioWorklet.addModule(new URL("mic-worklet.js", import.meta.url));
    const node = new AudioWorkletNode(context, "pcm16", {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCount: 1,
      channelCountMode: "explicit",
    });
    node.port.onmessage = (event) => send(event.data);
    source.connect(node);
  } else {
    const resampler = new Pcm16Resampler(context.sampleRate);
    const node = context.createScriptProcessor(4096, 1, 1);
    node.onaudioprocess = (event) => resampler.push(event.inputBuffer.getChannelData(0), send);
    source.connect(node);
    node.connect(context.destination); // a ScriptProcessor runs only when connected; it outputs silence
  }
  await context.resume();
}

function base64(samples) {
  const bytes = new Uint8Array(samples.buffer, samples.byteOffset, samples.byteLength);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function sessionUpdate(model, language) {
  const transcription = { model };
  if (language) transcription.language = language;
  return {
    type: "session.update",
    session: {
      type: "transcription",
      audio: {
        input: {
          format: { type: "audio/pcm", rate: RATE },
          transcription,
          turn_detection: { type: "server_vad", silence_duration_ms: 500 },
        },
      },
    },
  };
}

function connect(model) {
  const url = new URL("v1/realtime", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.search = new URLSearchParams({ intent: "transcription", model }).toString();
  // Browsers cannot set headers on a WebSocket: the key travels as a subprotocol, as OpenAI's clients send it.
  const protocols = ["realtime"];
  if (apiKey()) protocols.push(`openai-insecure-api-key.${apiKey()}`);
  const ws = new WebSocket(url, protocols);
  return new Promise((resolve, reject) => {
    ws.onopen = () => resolve(ws);
    ws.onerror = () => reject(new Error("cannot connect to the realtime endpoint"));
  });
}

function onEvent(event) {
  const id = event.item_id;
  switch (event.type) {
    case "input_audio_buffer.speech_started":
      live.open.add(id);
      live.current = id;
      item(id);
      say(liveStatus, "Hearing speech…");
      break;
    case "input_audio_buffer.speech_stopped":
      live.current = null;
      say(liveStatus, "Transcribing…");
      break;
    case "conversation.item.input_audio_transcription.delta":
      item(id).textContent += event.delta;
      break;
    case "conversation.item.input_audio_transcription.completed": {
      const li = item(id);
      li.className = "final";
      li.textContent = event.transcript.trim();
      if (!li.textContent) li.remove();
      finish(id);
      break;
    }
    case "conversation.item.input_audio_transcription.failed": {
      const li = item(id);
      li.className = "failed";
      li.textContent = `(not transcribed: ${event.error?.message ?? "error"})`;
      finish(id);
      break;
    }
    case "error":
      if (!(live.stopping && event.error?.code === "input_audio_buffer_commit_empty")) {
        say(liveStatus, `Error: ${event.error?.message}`, true);
      }
      break;
  }
}

function finish(id) {
  live.open.delete(id);
  if (!live.stopping && !live.current) say(liveStatus, "Listening…");
  if (live.stopping && live.open.size === 0) live.ws.close();
}

async function startLive() {
  startButton.disabled = true;
  say(liveStatus, "Starting the microphone…");
  const model = $("#live-model").value;
  const language = $("#live-language").value.trim();
  let audio, ws;
  try {
    audio = await microphone();
    await capture(audio, (samples) => {
      if (ws?.readyState !== WebSocket.OPEN || live?.stopping) return;
      ws.send(JSON.stringify({ type: "input_audio_buffer.append", audio: base64(samples) }));
      let sum = 0;
      for (const s of samples) sum += s * s;
      level.value = Math.min(1, (4 * Math.sqrt(sum / CHUNK_SAMPLES)) / 32768);
    });
    ws = await connect(model);
  } catch (error) {
    say(liveStatus, `Cannot start: ${error.message}`, true);
    stopAudio(audio);
    startButton.disabled = false;
    return;
  }
  live = { ws, ...audio, open: new Set(), current: null, stopping: false };
  ws.onmessage = (message) => onEvent(JSON.parse(message.data));
  ws.onclose = (close) => closed(close);
  ws.send(JSON.stringify(sessionUpdate(model, language)));
  stopButton.disabled = false;
  say(liveStatus, "Listening…");
}

function stopAudio(audio) {
  audio?.stream.getTracks().forEach((track) => track.stop());
  audio?.context.close();
  level.value = 0;
}

// Stop the microphone; a turn under way is committed, and the socket closes once every item has its text.
function stopLive() {
  if (!live) return;
  stopButton.disabled = true;
  live.stopping = true;
  stopAudio(live);
  if (live.current) live.ws.send(JSON.stringify({ type: "input_audio_buffer.commit" }));
  if (live.open.size === 0) {
    live.ws.close();
    return;
  }
  say(liveStatus, "Finishing the last words…");
  const { ws } = live;
  setTimeout(() => ws.close(), 20000); // a turn too short to commit never completes
}

function closed(close) {
  const wasStopping = live?.stopping;
  if (live && !wasStopping) stopAudio(live);
  for (const li of transcript.querySelectorAll("li.interim")) li.className = "final";
  live = null;
  startButton.disabled = false;
  stopButton.disabled = true;
  if (wasStopping) say(liveStatus, "Stopped.");
  else if (!liveStatus.classList.contains("error")) {
    say(liveStatus, `Connection closed${close.reason ? `: ${close.reason}` : ""} (${close.code}).`, true);
  }
}

startButton.addEventListener("click", startLive);
stopButton.addEventListener("click", stopLive);

refreshModels();
