// reelgen playground: one static page over the public API (/api/v1), with the key the user pastes.
// No build step and no dependencies. Everything the server sends is rendered with textContent,
// never as HTML. The key and the ids of this browser's tasks live in localStorage.
"use strict";

const KEY_STORE = "reelgen.apiKey";
const TASKS_STORE = "reelgen.tasks";
const MAX_RECENT = 20;
const POLL_FIRST_MS = 1000; // then x1.5 per poll, at most POLL_MAX_MS apart (the API's advice)
const POLL_MAX_MS = 5000;
const IMAGE_TYPES = ["image/jpeg", "image/png", "image/webp"];

const $ = (id) => document.getElementById(id);
const state = {
  models: [],
  shots: [],
  images: { start: null, end: null },
  current: null, // the task on show: {id, startedAt (ms), timer, elapsedTimer}
};

// ---------------------------------------------------------------------------------------------
// API calls and error envelopes
// ---------------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(code, message, details, status) {
    super(message);
    this.code = code;
    this.details = details || [];
    this.status = status || 0;
  }
}

function currentKey() {
  return $("api-key").value.trim();
}

async function api(path, { method = "GET", body, auth = true } = {}) {
  const headers = { Accept: "application/json" };
  if (auth) {
    const key = currentKey();
    if (!key) throw new ApiError("NO_KEY", "Paste your API key (sk-...) first.");
    headers.Authorization = `Bearer ${key}`;
  }
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError("CONNECTION_ERROR", `Cannot reach the server (${err.message}).`);
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch (_) {
    payload = null;
  }
  if (response.ok && payload && payload.success !== false) return payload.data;
  const err = payload && payload.error;
  if (err && typeof err === "object") {
    throw new ApiError(err.code || `HTTP_${response.status}`, err.message || response.statusText, err.details, response.status);
  }
  const text = typeof err === "string" ? err : `The server answered HTTP ${response.status} ${response.statusText}.`;
  throw new ApiError(`HTTP_${response.status}`, text, [], response.status);
}

const HINTS = {
  MISSING_AUTH_HEADER: "Paste your API key above.",
  INVALID_KEY_FORMAT: "API keys start with sk-.",
  INVALID_API_KEY: "Check the key: it may be mistyped, revoked or expired.",
  INSUFFICIENT_CREDITS: "Ask the operator for more credits, or pick a shorter or cheaper video.",
  RATE_LIMITED: "Too many requests: wait a moment and try again.",
  SERVICE_UNAVAILABLE: "The server is busy: try again in a moment.",
};

function readable(error) {
  if (!(error instanceof ApiError)) return `Unexpected error: ${error && error.message ? error.message : error}`;
  const hint = HINTS[error.code] ? ` ${HINTS[error.code]}` : "";
  return `${error.message}${hint} (${error.code})`;
}

function showErrors(messages) {
  const list = $("form-errors");
  list.replaceChildren(
    ...messages.map((m) => {
      const li = document.createElement("li");
      li.textContent = m;
      return li;
    }),
  );
}

function showApiError(error) {
  const lines = [readable(error)];
  for (const d of (error && error.details) || []) lines.push(`${d.field}: ${d.message}`);
  showErrors(lines);
}

// ---------------------------------------------------------------------------------------------
// Key and balance
// ---------------------------------------------------------------------------------------------
async function refreshBalance() {
  const out = $("balance");
  out.className = "";
  if (!currentKey()) {
    out.textContent = "";
    return;
  }
  try {
    const data = await api("/api/v1/credits");
    out.textContent = `Balance: ${data.credits} credits available` + (data.reserved ? `, ${data.reserved} held by running tasks` : "");
    out.className = "ok";
  } catch (err) {
    out.textContent = readable(err);
    out.className = "bad";
  }
}

function saveKey() {
  const key = currentKey();
  if (key) localStorage.setItem(KEY_STORE, key);
  else localStorage.removeItem(KEY_STORE);
  refreshBalance();
  refreshRecent();
}

// ---------------------------------------------------------------------------------------------
// Models, inputs, price
// ---------------------------------------------------------------------------------------------
function currentModel() {
  return state.models.find((m) => m.id === $("model").value) || null;
}

function isImageModel(model) {
  return !!model && model.inputs.includes("image_urls");
}

// the extend model continues a completed task: it takes task_id, prompt, duration and audio only
function isExtendModel(model) {
  return !!model && model.inputs.includes("task_id");
}

function fillSelect(select, values, chosen) {
  select.replaceChildren(
    ...values.map((v) => {
      const opt = document.createElement("option");
      opt.value = v;
      opt.textContent = v;
      return opt;
    }),
  );
  if (chosen && values.includes(chosen)) select.value = chosen;
}

async function loadModels() {
  try {
    state.models = await api("/api/v1/models", { auth: false });
  } catch (err) {
    showErrors([`Cannot load the models: ${readable(err)}`]);
    return;
  }
  const select = $("model");
  select.replaceChildren(
    ...state.models.map((m) => {
      const opt = document.createElement("option");
      opt.value = m.id;
      opt.textContent = `${m.name} (${m.id})`;
      return opt;
    }),
  );
  onModelChange();
}

function onModelChange() {
  const model = currentModel();
  if (!model) return;
  fillSelect($("mode"), model.modes || Object.keys(model.pricing), $("mode").value || "standard");
  const ratios = model.aspectRatios || [];
  fillSelect($("aspect-ratio"), ratios, $("aspect-ratio").value || ratios[0]);
  $("aspect-field").hidden = ratios.length === 0;
  $("images-field").hidden = !isImageModel(model);
  const moves = model.cameraMoves || [];
  fillSelect($("camera"), ["none", ...moves], $("camera").value || "none");
  $("camera-field").hidden = moves.length === 0;
  const enhance = model.enhancePromptCredits;
  $("enhance-field").hidden = enhance == null;
  if (enhance == null) $("enhance-prompt").checked = false;
  $("enhance-price").textContent = enhance ? `(+${enhance} credits per prompt)` : "";
  const loras = (model.loras || []).map((l) => l.name);
  fillSelect($("loras"), loras, null);
  $("loras-field").hidden = loras.length === 0;
  $("duration").min = model.minDuration;
  $("duration").max = model.maxDuration;
  const extending = isExtendModel(model);
  $("extend-field").hidden = !extending;
  $("mode-field").hidden = extending;
  $("multi-field").hidden = extending;
  if (extending) {
    $("multi-shots").checked = false;
    $("shots").hidden = true;
  }
  updatePrice();
}

function startExtend(taskId) {
  const model = state.models.find(isExtendModel);
  if (!model) return;
  $("model").value = model.id;
  onModelChange();
  $("extend-task").value = taskId;
  $("prompt").focus();
}

function durationValue() {
  const raw = $("duration").value.trim();
  return /^\d+$/.test(raw) ? Number(raw) : NaN;
}

function price() {
  const model = currentModel();
  const duration = durationValue();
  if (!model || !Number.isInteger(duration)) return null;
  const rates = model.pricing[$("mode").value];
  if (!rates) return null;
  const rate = $("audio").checked ? rates.audio : rates.noAudio;
  // the enhancer writes one prompt per shot (one without shots), each at the model's enhancePromptCredits
  const prompts = $("multi-shots").checked ? Math.max(1, state.shots.length) : 1;
  const enhance = $("enhance-prompt").checked ? (model.enhancePromptCredits || 0) * prompts : 0;
  return { rate, duration, enhance, total: rate * duration + enhance };
}

function updatePrice() {
  const model = currentModel();
  if (isExtendModel(model)) {
    const duration = durationValue();
    const kind = $("audio").checked ? "audio" : "noAudio";
    const rates = Object.entries(model.pricing).map(([mode, r]) => `${mode} ${r[kind]}`).join(", ");
    $("price").textContent = Number.isInteger(duration)
      ? `Price: ${duration} s × the original's mode rate (${rates} credits/s)`
      : "Price: set a whole number of seconds";
    return;
  }
  const p = price();
  const extra = p && p.enhance ? ` + ${p.enhance} for prompt enhancement` : "";
  $("price").textContent = p ? `Price: ${p.total} credits (${p.rate} credits/s × ${p.duration} s${extra})` : "Price: set a whole number of seconds";
  updateShotSum();
}

// ---------------------------------------------------------------------------------------------
// Start and end frames: uploads become data: URIs
// ---------------------------------------------------------------------------------------------
function readImage(which) {
  const input = $(`${which}-image`);
  const preview = $(`${which}-preview`);
  const file = input.files && input.files[0];
  state.images[which] = null;
  preview.hidden = true;
  if (!file) return;
  if (!IMAGE_TYPES.includes(file.type)) {
    showErrors([`${file.name}: use a JPEG, PNG or WEBP image.`]);
    input.value = "";
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    state.images[which] = reader.result;
    preview.src = reader.result;
    preview.hidden = false;
  };
  reader.onerror = () => showErrors([`${file.name}: cannot read the file.`]);
  reader.readAsDataURL(file);
}

// ---------------------------------------------------------------------------------------------
// Multi-shot editor: shot durations must add up to the video's duration
// ---------------------------------------------------------------------------------------------
function renderShots() {
  const list = $("shot-list");
  list.replaceChildren(
    ...state.shots.map((shot, i) => {
      const li = document.createElement("li");
      li.className = "shot";
      const prompt = document.createElement("input");
      prompt.type = "text";
      prompt.maxLength = 2500;
      prompt.placeholder = `shot ${i + 1}: what happens`;
      prompt.value = shot.prompt;
      prompt.className = "shot-prompt";
      prompt.addEventListener("input", () => (shot.prompt = prompt.value));
      const seconds = document.createElement("input");
      seconds.type = "number";
      seconds.min = "1";
      seconds.step = "1";
      seconds.value = String(shot.duration);
      seconds.className = "shot-duration";
      seconds.setAttribute("aria-label", `shot ${i + 1} seconds`);
      seconds.addEventListener("input", () => {
        shot.duration = seconds.value.trim();
        updateShotSum();
      });
      const unit = document.createElement("span");
      unit.textContent = "s";
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "secondary";
      remove.textContent = "Remove";
      remove.addEventListener("click", () => {
        state.shots.splice(i, 1);
        renderShots();
      });
      li.append(prompt, seconds, unit, remove);
      return li;
    }),
  );
  updateShotSum();
}

function shotTotal() {
  return state.shots.reduce((sum, s) => sum + (/^\d+$/.test(String(s.duration)) ? Number(s.duration) : NaN), 0);
}

function updateShotSum() {
  const out = $("shot-sum");
  if (!$("multi-shots").checked) {
    out.textContent = "";
    return;
  }
  const total = shotTotal();
  const duration = durationValue();
  out.textContent = `Shots add up to ${Number.isNaN(total) ? "?" : total} s of ${Number.isNaN(duration) ? "?" : duration} s`;
  out.className = total === duration ? "ok" : "bad";
}

function onMultiShotToggle() {
  const on = $("multi-shots").checked;
  $("shots").hidden = !on;
  if (on && state.shots.length === 0) {
    const duration = durationValue();
    state.shots.push({ prompt: $("prompt").value.trim(), duration: Number.isNaN(duration) ? 5 : duration });
  }
  renderShots();
}

// ---------------------------------------------------------------------------------------------
// Validate and submit
// ---------------------------------------------------------------------------------------------
function buildRequest() {
  const problems = [];
  const model = currentModel();
  if (!currentKey()) problems.push("Paste your API key (sk-...) first.");
  if (!model) problems.push("Pick a model.");
  const prompt = $("prompt").value;
  if (!prompt.trim()) problems.push("Write a prompt.");
  if (prompt.length > 2500) problems.push("The prompt is longer than 2500 characters.");
  const duration = durationValue();
  if (model && (!Number.isInteger(duration) || duration < model.minDuration || duration > model.maxDuration)) {
    problems.push(`Duration must be a whole number of seconds from ${model.minDuration} to ${model.maxDuration}.`);
  }
  if (model && isExtendModel(model)) {
    const taskId = $("extend-task").value.trim();
    if (!taskId) problems.push("Give the id of the task to extend.");
    return { problems, body: { model: model.id, input: { task_id: taskId, prompt, duration, audio: $("audio").checked } } };
  }
  const input = { prompt, duration, mode: $("mode").value, audio: $("audio").checked };
  if (model && isImageModel(model)) {
    if (!state.images.start) problems.push("Image-to-video needs a start image.");
    input.image_urls = [state.images.start, state.images.end].filter(Boolean);
  } else if (model && (model.aspectRatios || []).length) {
    input.aspect_ratio = $("aspect-ratio").value;
  }
  if (!$("camera-field").hidden && $("camera").value !== "none") input.camera_control = { type: $("camera").value };
  const chosen = [...$("loras").selectedOptions].map((o) => ({ name: o.value }));
  if (model && chosen.length > (model.maxLoras || 0)) problems.push(`Pick at most ${model.maxLoras} LoRAs.`);
  if (chosen.length) input.loras = chosen;
  if (!$("enhance-field").hidden && $("enhance-prompt").checked) input.enhance_prompt = true;
  if ($("multi-shots").checked) {
    if (state.shots.length === 0) problems.push("Add at least one shot, or turn multi-shot off.");
    state.shots.forEach((s, i) => {
      if (!String(s.prompt).trim()) problems.push(`Shot ${i + 1} needs a prompt.`);
      if (!/^\d+$/.test(String(s.duration)) || Number(s.duration) < 1) problems.push(`Shot ${i + 1} needs a whole number of seconds (at least 1).`);
    });
    const total = shotTotal();
    if (!Number.isNaN(total) && Number.isInteger(duration) && total !== duration) {
      problems.push(`The shots add up to ${total} s but the video is ${duration} s.`);
    }
    input.multi_shots = true;
    input.multi_prompt = state.shots.map((s) => ({ prompt: s.prompt, duration: Number(s.duration) }));
    if ($("continuity").value !== "cut") input.multi_shot_continuity = $("continuity").value;
  }
  return { problems, body: model ? { model: model.id, input } : null };
}

async function onSubmit(event) {
  event.preventDefault();
  const { problems, body } = buildRequest();
  if (problems.length) {
    showErrors(problems);
    return;
  }
  showErrors([]);
  const button = $("submit");
  button.disabled = true;
  try {
    const task = await api("/api/v1/generate", { method: "POST", body });
    remember({ id: task.id, prompt: body.input.prompt, createdAt: task.createdAt || new Date().toISOString() });
    $("balance").textContent = `Balance: ${task.creditsRemaining} credits available (${task.creditsUsed} held for this task)`;
    $("balance").className = "ok";
    watch(task.id, Date.now());
  } catch (err) {
    showApiError(err);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Watching a task: status, progress, elapsed; the result in the <video>
// ---------------------------------------------------------------------------------------------
function stopWatching() {
  if (!state.current) return;
  if (state.current.previewUrl) URL.revokeObjectURL(state.current.previewUrl);
  clearTimeout(state.current.timer);
  clearInterval(state.current.elapsedTimer);
  state.current = null;
}

function watch(id, startedAt) {
  stopWatching();
  const current = { id, startedAt, timer: null, elapsedTimer: null, delay: POLL_FIRST_MS };
  state.current = current;
  $("task-panel").hidden = false;
  $("task-id").textContent = id;
  $("task-status").textContent = "submitted";
  $("task-status").className = "";
  $("task-error").textContent = "";
  $("task-progress").value = 0;
  const video = $("result-video");
  video.hidden = true;
  video.removeAttribute("src");
  $("result-link").hidden = true;
  $("result-meta").textContent = "";
  $("task-preview-box").hidden = true;
  $("task-preview").removeAttribute("src");
  $("result-enhanced").hidden = true;
  const tick = () => {
    $("task-elapsed").textContent = `${Math.round((Date.now() - current.startedAt) / 1000)} s elapsed`;
  };
  tick();
  current.elapsedTimer = setInterval(tick, 1000);
  poll(current);
}

async function poll(current) {
  if (state.current !== current) return;
  let task;
  try {
    task = await api(`/api/v1/tasks/${encodeURIComponent(current.id)}`);
  } catch (err) {
    if (state.current !== current) return;
    $("task-error").textContent = readable(err);
    if (["CONNECTION_ERROR", "SERVICE_UNAVAILABLE", "RATE_LIMITED"].includes(err.code)) schedule(current);
    else stopWatching();
    return;
  }
  if (state.current !== current) return;
  $("task-error").textContent = "";
  showTask(task);
  updateRecentRow(task);
  await showPreview(current, task);
  if (["completed", "success", "failed", "cancelled"].includes(task.status)) {
    clearInterval(current.elapsedTimer);
    if (task.startedAt && task.completedAt) {
      const seconds = (Date.parse(task.completedAt) - Date.parse(task.createdAt)) / 1000;
      if (seconds >= 0) $("task-elapsed").textContent = `finished in ${seconds.toFixed(1)} s`;
    }
    refreshBalance();
    return;
  }
  schedule(current);
}

function schedule(current) {
  current.timer = setTimeout(() => poll(current), current.delay);
  current.delay = Math.min(current.delay * 1.5, POLL_MAX_MS);
}

// The task's latest live preview (an animated WebP the server keeps while the task runs and as long
// as its result): fetched with the key on each poll, shown from a blob URL. 404 NO_PREVIEW: none yet.
async function showPreview(current, task) {
  const status = task.status === "success" ? "completed" : task.status;
  if (!["processing", "completed"].includes(status)) return;
  let response;
  try {
    response = await fetch(`/api/v1/tasks/${encodeURIComponent(task.id)}/preview`, {
      headers: { Authorization: `Bearer ${currentKey()}` },
    });
  } catch (_) {
    return; // a preview is a courtesy: the next poll tries again
  }
  if (!response.ok || state.current !== current) return;
  const blob = await response.blob();
  if (state.current !== current) return;
  if (current.previewUrl) URL.revokeObjectURL(current.previewUrl);
  current.previewUrl = URL.createObjectURL(blob);
  $("task-preview").src = current.previewUrl;
  $("task-preview-caption").textContent =
    status === "completed" ? "The last live preview, before the video" : "Live preview (low resolution; updates as it runs)";
  $("task-preview-box").hidden = false;
}

function videoUrl(task) {
  return (task.result && task.result.url) || (task.output && task.output.url) || null;
}

function showTask(task) {
  const status = task.status === "success" ? "completed" : task.status;
  const label = status === "pending" && task.queuePosition != null ? `pending (queue position ${task.queuePosition + 1})` : status;
  $("task-status").textContent = label;
  $("task-status").className = `status-${status}`;
  $("task-progress").value = status === "completed" ? 100 : task.progress || 0;
  if (task.error) $("task-error").textContent = `${task.error.message} (${task.error.code})`;
  const url = status === "completed" ? videoUrl(task) : null;
  if (url) {
    const video = $("result-video");
    if (video.getAttribute("src") !== url) video.src = url;
    video.hidden = false;
    const link = $("result-link");
    link.href = url;
    link.download = `${task.id}.mp4`;
    link.hidden = false;
    const out = task.output || {};
    const parts = [];
    if (out.duration != null) parts.push(`${Number(out.duration).toFixed(1)} s`);
    if (out.hasAudio != null) parts.push(out.hasAudio ? "with audio" : "no audio");
    if (task.creditsUsed != null) parts.push(`${task.creditsUsed} credits`);
    $("result-meta").textContent = parts.join(" · ");
    const enhanced = task.enhancedPrompt
      ? [task.enhancedPrompt]
      : (task.enhancedMultiPrompt || []).map((s, i) => `shot ${i + 1}: ${s.prompt}`);
    $("result-enhanced").textContent = enhanced.length ? `Enhanced prompt: ${enhanced.join("\n")}` : "";
    $("result-enhanced").hidden = enhanced.length === 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Recent tasks of this browser
// ---------------------------------------------------------------------------------------------
function recent() {
  try {
    const list = JSON.parse(localStorage.getItem(TASKS_STORE) || "[]");
    return Array.isArray(list) ? list.filter((t) => t && typeof t.id === "string") : [];
  } catch (_) {
    return [];
  }
}

function remember(entry) {
  const list = [entry, ...recent().filter((t) => t.id !== entry.id)].slice(0, MAX_RECENT);
  localStorage.setItem(TASKS_STORE, JSON.stringify(list));
  renderRecent();
}

function renderRecent() {
  const list = recent();
  $("recent-empty").hidden = list.length > 0;
  $("recent-body").replaceChildren(
    ...list.map((t) => {
      const row = document.createElement("tr");
      row.dataset.taskId = t.id;
      const id = document.createElement("td");
      const code = document.createElement("code");
      code.textContent = t.id.slice(0, 8);
      code.title = t.id;
      id.append(code);
      const prompt = document.createElement("td");
      prompt.className = "prompt";
      prompt.textContent = t.prompt || "";
      prompt.title = t.prompt || "";
      const status = document.createElement("td");
      status.className = "status";
      status.textContent = t.status || "…";
      const created = document.createElement("td");
      created.textContent = t.createdAt ? new Date(t.createdAt).toLocaleString() : "";
      const open = document.createElement("td");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "secondary";
      button.textContent = "Show";
      button.addEventListener("click", () => watch(t.id, Date.parse(t.createdAt) || Date.now()));
      open.append(button);
      if (t.status === "completed") addExtendButton(open, t.id);
      row.append(id, prompt, status, created, open);
      return row;
    }),
  );
}

// a completed task can be continued: the button selects the extend model with this task
function addExtendButton(cell, taskId) {
  if (cell.querySelector("button.extend")) return;
  const extend = document.createElement("button");
  extend.type = "button";
  extend.className = "secondary extend";
  extend.textContent = "Extend";
  extend.addEventListener("click", () => startExtend(taskId));
  cell.append(" ", extend);
}

function updateRecentRow(task) {
  const list = recent();
  const entry = list.find((t) => t.id === task.id);
  if (entry) {
    entry.status = task.status === "success" ? "completed" : task.status;
    localStorage.setItem(TASKS_STORE, JSON.stringify(list));
  }
  const cell = document.querySelector(`tr[data-task-id="${CSS.escape(task.id)}"] td.status`);
  if (cell) {
    cell.textContent = entry ? entry.status : task.status;
    cell.className = `status status-${cell.textContent}`;
    if (cell.textContent === "completed") addExtendButton(cell.parentElement.lastElementChild, task.id);
  }
}

async function refreshRecent() {
  renderRecent();
  if (!currentKey()) return;
  await Promise.all(
    recent().map(async (t) => {
      try {
        updateRecentRow(await api(`/api/v1/tasks/${encodeURIComponent(t.id)}`));
      } catch (err) {
        const cell = document.querySelector(`tr[data-task-id="${CSS.escape(t.id)}"] td.status`);
        if (cell) {
          cell.textContent = err.code === "TASK_NOT_FOUND" ? "not found (other key?)" : err.code;
          cell.className = "status status-unknown";
        }
      }
    }),
  );
}

// ---------------------------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------------------------
function init() {
  $("api-key").value = localStorage.getItem(KEY_STORE) || "";
  $("api-key").addEventListener("change", saveKey);
  $("forget-key").addEventListener("click", () => {
    $("api-key").value = "";
    saveKey();
  });
  $("model").addEventListener("change", onModelChange);
  for (const id of ["duration", "mode", "audio", "enhance-prompt"]) {
    $(id).addEventListener("input", updatePrice);
    $(id).addEventListener("change", updatePrice);
  }
  $("start-image").addEventListener("change", () => readImage("start"));
  $("end-image").addEventListener("change", () => readImage("end"));
  $("multi-shots").addEventListener("change", onMultiShotToggle);
  $("add-shot").addEventListener("click", () => {
    state.shots.push({ prompt: "", duration: 1 });
    renderShots();
  });
  $("refresh-recent").addEventListener("click", refreshRecent);
  $("generate-form").addEventListener("submit", onSubmit);
  loadModels();
  refreshBalance();
  refreshRecent();
}

document.addEventListener("DOMContentLoaded", init);
