// The videokv web page: plain JavaScript over the REST API (no build step, nothing fetched
// from elsewhere). The API key lives in sessionStorage only. Views by URL hash:
//   #/            upload and the video list (live ingest progress)
//   #/video/ID    player, streamed answers, evidence timeline, transcript  (?t=SECONDS seeks)
//   #/search      search across the tenant's videos
//   #/jobs        batch jobs started from this page
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const KEY = "videokv-key", JOBS = "videokv-jobs";
let viewAbort = new AbortController();          // cancels a view's streams when it is left

// ---------------------------------------------------------------- errors and the API
function showError(text) { const e = $("#error"); e.textContent = text; e.hidden = false; }
function clearError() { $("#error").hidden = true; }

class ApiError extends Error {}

async function problemText(resp) {
  // A problem+json's sentence; anything else: the status line.
  try {
    const body = await resp.json();
    if (body.detail) return body.detail;
    if (body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return `${resp.status} ${resp.statusText || "error"}`;
}

async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (opts.json !== undefined) { headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(opts.json); }
  let resp;
  try {
    resp = await fetch(path, Object.assign({}, opts, { headers, signal: opts.signal || viewAbort.signal }));
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(`Cannot reach the videokv server (${e.message}).`);
  }
  if (resp.status === 401) throw new ApiError(`The server refused this API key: ${await problemText(resp)}. ` +
                                              "Enter a valid key above.");
  if (!resp.ok) throw new ApiError(await problemText(resp));
  return resp;
}

function failed(e) { if (e.name !== "AbortError") showError(e.message); }

// Server-sent events of a fetch response (EventSource cannot send the key): {event, data}.
async function* events(resp) {
  const reader = resp.body.getReader(), text = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += text.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      yield { event, data: data ? JSON.parse(data) : null };
    }
  }
}

const clock = (s) => { s = Math.max(0, s || 0); const m = Math.floor(s / 60), r = Math.floor(s % 60);
  return `${m}:${String(r).padStart(2, "0")}`; };
const el = (tag, props = {}, ...kids) => { const n = Object.assign(document.createElement(tag), props);
  n.append(...kids); return n; };
function render(id) { const main = $("#main"); main.replaceChildren($(`#${id}`).content.cloneNode(true)); return main; }

// Signed links to a video's file and frames (a <video> or <img> cannot send the key).
const mediaLinks = new Map();
async function media(id) {
  if (!mediaLinks.has(id)) mediaLinks.set(id, api(`/v1/videos/${id}/media`).then((r) => r.json()));
  try { return await mediaLinks.get(id); } catch (e) { mediaLinks.delete(id); throw e; }
}

// ---------------------------------------------------------------- videos
async function videosView() {
  const main = render("t-videos");
  $("#upload-form", main).addEventListener("submit", upload);
  const resp = await api("/v1/videos");
  const { videos } = await resp.json();
  $("#videos-empty").hidden = videos.length > 0;
  for (const v of videos) {
    $("#video-table tbody").append(videoRow(v));
    if (v.status === "QUEUED" || v.status === "INGESTING") watch(v.id);
  }
}

function videoRow(v) {
  const bar = el("progress", { max: 1, value: v.progress });
  const row = el("tr", { id: `v-${v.id}` }, el("td", {}, el("a", { href: `#/video/${v.id}`, textContent: v.filename })),
    el("td", { textContent: clock(v.duration) }), el("td", { className: "status", textContent: v.status }),
    el("td", {}, bar, el("span", { className: "pct", textContent: ` ${Math.round(v.progress * 100)}%` })),
    el("td", { className: "note", textContent: v.error || "" }));
  return row;
}

function updateRow(v) {
  const row = $(`#v-${v.id}`);
  if (row) row.replaceWith(videoRow(v));
}

async function watch(id) {
  try {
    const resp = await api(`/v1/videos/${id}/events`);
    for await (const { event, data } of events(resp)) if (data && data.status) updateRow(data);
  } catch (e) { failed(e); }
}

function upload(ev) {
  ev.preventDefault();
  clearError();
  const file = $("#upload-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("ocr", $("#opt-ocr").checked ? "true" : "false");
  form.append("asr", $("#opt-asr").checked ? "true" : "false");
  const subs = $("#upload-subs").files[0];
  if (subs) { form.append("subtitles", "true"); form.append("subtitles_file", subs); }
  form.append("file", file);
  // XMLHttpRequest: fetch reports no upload progress.
  const xhr = new XMLHttpRequest(), bar = $("#upload-progress"), note = $("#upload-note");
  xhr.open("POST", "/v1/videos");
  const key = sessionStorage.getItem(KEY);
  if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
  bar.hidden = false; bar.value = 0;
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) { bar.value = e.loaded / e.total;
    note.textContent = `Uploading ${file.name}: ${Math.round(100 * e.loaded / e.total)}%`; } };
  xhr.onerror = () => showError("The upload did not reach the server (network error).");
  xhr.onload = () => {
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
    if (xhr.status >= 400) { bar.hidden = true; note.textContent = "";
      showError(body.detail || `Upload failed: ${xhr.status}`); return; }
    note.textContent = `${file.name}: uploaded, ${body.status}.`;
    $("#videos-empty").hidden = true;
    const existing = $(`#v-${body.id}`);
    if (existing) existing.remove();
    $("#video-table tbody").prepend(videoRow(body));
    if (body.status === "QUEUED" || body.status === "INGESTING") watch(body.id);
  };
  xhr.send(form);
}

// ---------------------------------------------------------------- one video
async function videoView(id, params) {
  const main = render("t-video");
  const player = $("#player", main);
  const [view, links] = await Promise.all([api(`/v1/videos/${id}`).then((r) => r.json()), media(id)]);
  $("#video-title").textContent = `${view.filename} (${clock(view.duration)}, ${view.status})`;
  player.src = links.file_url;
  player.dataset.duration = view.duration;
  const t = parseFloat(params.get("t"));
  if (!isNaN(t)) player.addEventListener("loadedmetadata", () => { player.currentTime = t; }, { once: true });
  $("#ask-form", main).addEventListener("submit", (ev) => { ev.preventDefault(); ask(id, view, links); });
  transcript(id);
}

function seek(t) {
  const player = $("#player");
  const go = () => { player.currentTime = t; };
  if (player.readyState >= 1) go(); else player.addEventListener("loadedmetadata", go, { once: true });
}

async function ask(id, view, links) {
  clearError();
  const out = $("#answer"), meta = $("#answer-meta"), button = $("#ask-go");
  out.textContent = ""; meta.textContent = ""; button.disabled = true;
  $("#timeline-bar").replaceChildren(); $("#thumbs").replaceChildren();
  try {
    const resp = await api(`/v1/videos/${id}/query`, { method: "POST",
      json: { question: $("#question").value, mode: $("#mode").value, stream: true } });
    for await (const { event, data } of events(resp)) {
      if (event === "token") out.textContent += data.text;
      else if (event === "answer") { out.textContent = data.answer; evidence(data, view, links); }
      else if (event === "error") showError(data.detail);
    }
  } catch (e) { failed(e); } finally { button.disabled = false; }
}

function evidence(answer, view, links) {
  const spans = [...answer.evidence].sort((a, b) => a.t_start - b.t_start);
  const length = view.duration || Math.max(...spans.map((s) => s.t_end), 1);
  for (const s of spans) {
    const mark = el("button", { className: "span", title: `${clock(s.t_start)}-${clock(s.t_end)}` });
    mark.style.left = `${100 * s.t_start / length}%`;
    mark.style.width = `${Math.max(1, 100 * (s.t_end - s.t_start) / length)}%`;
    mark.addEventListener("click", () => seek(s.t_start + 0.01));
    $("#timeline-bar").append(mark);
    const mid = Math.min((s.t_start + s.t_end) / 2, Math.max(0, length - 0.05));
    const thumb = el("button", { className: "thumb", title: `seek to ${clock(s.t_start)}` },
      el("img", { src: `${links.frame_url}&t=${mid.toFixed(2)}&max_side=160`, alt: `frame at ${clock(mid)}` }),
      el("span", { textContent: `${clock(s.t_start)}-${clock(s.t_end)}` }));
    thumb.dataset.tStart = s.t_start; thumb.dataset.tEnd = s.t_end;
    thumb.addEventListener("click", () => seek(s.t_start + 0.01));
    $("#thumbs").append(thumb);
  }
  const t = answer.timings || {};
  $("#answer-meta").textContent = `${answer.mode}: first token ${Math.round(t.ttft_ms || 0)} ms, ` +
    `${(answer.kv_bytes_loaded / 2 ** 20).toFixed(1)} MiB of KV, ${answer.context_tokens} context tokens`;
}

async function transcript(id) {
  const list = $("#transcript"), note = $("#transcript-note");
  try {
    const { segments, channels } = await (await api(`/v1/videos/${id}/transcript`)).json();
    for (const s of segments) {
      const line = el("button", { className: "line" }, el("time", { textContent: clock(s.t_start) }),
        ` ${s.source}: ${s.text}`);
      line.addEventListener("click", () => seek(s.t_start + 0.01));
      list.append(el("li", {}, line));
    }
    const ran = Object.keys(channels || {}).filter((k) => channels[k]);
    note.textContent = segments.length ? "" : `No text in this video${ran.length ? "" : " (no text channel ran)"}.`;
  } catch (e) { if (e.name !== "AbortError") note.textContent = e.message; }
}

// ---------------------------------------------------------------- search
// Moments: frame-precise spans (what the visual oracle saw, or a line read or said), a page
// at a time; "More" asks for the next page with the token the last one gave.
function searchView() {
  const main = render("t-search");
  const hits = $("#hits", main), more = $("#search-more", main);
  let query = "", token = null;
  async function fetchPage() {
    clearError();
    try {
      const body = { query, limit: 12, top_k: 1, ...(token ? { page_token: token } : {}) };
      const got = await (await api("/v1/search", { method: "POST", json: body })).json();
      token = got.next_page_token;
      more.hidden = !token;
      if (!hits.children.length) $("#search-note").textContent = got.moments.length ? "" : "Nothing found.";
      for (const m of got.moments) {
        const links = await media(m.video_id);
        const mid = (m.start + m.end) / 2;
        const what = m.text ? ` “${m.text}”` : "";
        const open = el("a", { className: "hit", href: `#/video/${m.video_id}?t=${m.start}` },
          el("img", { src: `${links.frame_url}&t=${mid.toFixed(2)}&max_side=160`, alt: "" }),
          el("span", { textContent: `${m.filename} ${clock(m.start)}-${clock(m.end)} · ${m.source}${what} ` +
                                    `(score ${m.score.toFixed(2)})` }));
        hits.append(el("li", {}, open));
      }
    } catch (e) { failed(e); }
  }
  $("#search-form", main).addEventListener("submit", (ev) => {
    ev.preventDefault();
    hits.replaceChildren(); query = $("#search-q").value; token = null;
    fetchPage();
  });
  more.addEventListener("click", fetchPage);
}

// ---------------------------------------------------------------- jobs
const myJobs = () => JSON.parse(sessionStorage.getItem(JOBS) || "[]");

async function jobsView() {
  const main = render("t-jobs");
  const { videos } = await (await api("/v1/videos")).json();
  const box = $("#job-videos", main);
  for (const v of videos.filter((x) => x.status === "READY"))
    box.append(el("label", {}, el("input", { type: "checkbox", value: v.id, checked: true }), ` ${v.filename}`));
  $("#job-form", main).addEventListener("submit", async (ev) => {
    ev.preventDefault(); clearError();
    const ids = [...box.querySelectorAll("input:checked")].map((i) => i.value);
    const questions = $("#job-questions").value.split("\n").map((q) => q.trim()).filter(Boolean);
    try {
      const job = await (await api("/v1/jobs", { method: "POST", json: { video_ids: ids, questions } })).json();
      sessionStorage.setItem(JOBS, JSON.stringify([job.id, ...myJobs()]));
      jobRow(job.id);
    } catch (e) { failed(e); }
  });
  for (const id of myJobs().reverse()) jobRow(id);
}

async function jobRow(id) {
  const row = el("tr", { id: `j-${id}` });
  $("#job-table tbody").prepend(row);
  const download = (format) => el("button", { className: "quiet", textContent: format.toUpperCase(),
    onclick: () => saveResults(id, format) });
  for (;;) {
    let job;
    try { job = await (await api(`/v1/jobs/${id}`)).json(); } catch (e) { failed(e); return; }
    row.replaceChildren(el("td", { textContent: id }), el("td", { className: "status", textContent: job.status }),
      el("td", {}, el("progress", { max: job.total || 1, value: job.done }), ` ${job.done}/${job.total}`),
      el("td", {}, download("jsonl"), download("csv")));
    if (["DONE", "FAILED", "CANCELLED"].includes(job.status) || !row.isConnected) return;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function saveResults(id, format) {
  try {
    const blob = await (await api(`/v1/jobs/${id}/results?format=${format}`)).blob();
    const a = el("a", { href: URL.createObjectURL(blob), download: `${id}.${format}` });
    document.body.append(a); a.click(); a.remove();
  } catch (e) { failed(e); }
}

// ---------------------------------------------------------------- key and routing
async function route() {
  viewAbort.abort(); viewAbort = new AbortController();
  clearError();
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(query || "");
  for (const a of document.querySelectorAll("nav a"))
    a.classList.toggle("here", path.startsWith(`/${a.dataset.nav}`) || (path === "/" && a.dataset.nav === "videos"));
  if (!sessionStorage.getItem(KEY)) {
    $("#main").replaceChildren(el("p", { className: "card", textContent: "Enter your API key above to begin." }));
    return;
  }
  try {
    if (path.startsWith("/video/")) await videoView(path.slice(7), params);
    else if (path === "/search") searchView();
    else if (path === "/jobs") await jobsView();
    else await videosView();
  } catch (e) { failed(e); }
}

$("#key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("#key").value.trim();
  if (key) sessionStorage.setItem(KEY, key);
  $("#key").value = ""; $("#key").placeholder = key ? "key in use (this tab only)" : $("#key").placeholder;
  mediaLinks.clear();
  route();
});
$("#key-forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); mediaLinks.clear(); route(); });
if (sessionStorage.getItem(KEY)) $("#key").placeholder = "key in use (this tab only)";
window.addEventListener("hashchange", route);
route();
