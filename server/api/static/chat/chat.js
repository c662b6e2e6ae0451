// The chat page: the server's own API (/v1), streamed, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const history = []; // the conversation as API messages
let controller = null; // the running request's AbortController

function headers() {
  const out = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers() });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error.message || message;
    } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function showError(text) {
  $("error").textContent = text || "";
  $("error").hidden = !text;
}

function markdown(element, text) {
  element.innerHTML = DOMPurify.sanitize(marked.parse(text || ""));
  element.querySelectorAll("pre code").forEach((block) => hljs.highlightElement(block));
}

// --- models -------------------------------------------------------------------------------

async function loadModels() {
  try {
    const { data } = await (await api("/v1/models")).json();
    const select = $("model");
    const chosen = select.value || localStorage.getItem("model");
    select.replaceChildren(...data.map((m) => {
      const option = document.createElement("option");
      option.value = m.id;
      option.textContent = m.alias_of ? `${m.id} → ${m.alias_of}` : m.id;
      option.dataset.state = m.state || "";
      return option;
    }));
    if (chosen && data.some((m) => m.id === chosen)) select.value = chosen;
    showState();
    showError("");
  } catch (error) {
    showError(`Models: ${error.message}`);
  }
}

function showState() {
  const option = $("model").selectedOptions[0];
  const state = option ? option.dataset.state : "";
  $("model-state").textContent = state;
  $("model-state").className = `state ${state}`;
}

// --- chat ---------------------------------------------------------------------------------

function bubble(role) {
  const element = document.createElement("div");
  element.className = `message ${role}`;
  $("messages").append(element);
  return element;
}

function request(messages) {
  const body = {
    model: $("model").value,
    messages,
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number($("temperature").value),
    max_tokens: Number($("max-tokens").value) || undefined,
    store: $("store").checked,
  };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  const format = $("format").value;
  if (format === "json_object") body.response_format = { type: "json_object" };
  if (format === "json_schema") {
    body.response_format = { type: "json_schema", json_schema: { name: "answer", schema: JSON.parse($("schema").value) } };
  }
  if ($("tools").value.trim()) {
    body.tools = JSON.parse($("tools").value);
    body.tool_choice = $("tool-choice").value;
    body.parallel_tool_calls = $("parallel").checked;
  }
  const metadata = pairs($("metadata").value);
  if (body.store && Object.keys(metadata).length) body.metadata = metadata;
  return body;
}

function pairs(text) {
  const out = {};
  for (const item of text.split(",")) {
    const [key, ...rest] = item.split("=");
    if (key.trim() && rest.length) out[key.trim()] = rest.join("=").trim();
  }
  return out;
}

async function send(text) {
  showError("");
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  history.push({ role: "user", content: text });
  messages.push(...history);
  bubble("user").textContent = text;

  const answer = bubble("assistant");
  const reasoning = document.createElement("details");
  reasoning.className = "reasoning";
  reasoning.hidden = true;
  reasoning.innerHTML = "<summary>Reasoning</summary><div></div>";
  const content = document.createElement("div");
  content.className = "content";
  const calls = document.createElement("div");
  calls.className = "calls";
  const stats = document.createElement("div");
  stats.className = "stats";
  answer.append(reasoning, content, calls, stats);

  let body;
  try {
    body = request(messages);
  } catch (error) {
    showError(`Settings: ${error.message}`);
    history.pop();
    return;
  }
  controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  const started = performance.now();
  let firstToken = null;
  let text_ = "";
  let thought = "";
  const toolCalls = [];
  let usage = null;
  let finish = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) {
      const error = await response.json().catch(() => ({ error: { message: response.statusText } }));
      throw new Error(error.error.message);
    }
    for await (const event of events(response)) {
      if (event.error) throw new Error(event.error.message);
      if (event.usage) usage = event.usage;
      for (const choice of event.choices || []) {
        const delta = choice.delta || {};
        if (delta.content || delta.reasoning_content) firstToken ??= performance.now();
        if (delta.reasoning_content) {
          thought += delta.reasoning_content;
          reasoning.hidden = false;
          reasoning.querySelector("div").textContent = thought;
        }
        if (delta.content) {
          text_ += delta.content;
          markdown(content, text_);
        }
        for (const call of delta.tool_calls || []) {
          firstToken ??= performance.now();
          const held = (toolCalls[call.index] ??= { id: "", name: "", arguments: "" });
          held.id = call.id || held.id;
          held.name += call.function?.name || "";
          held.arguments += call.function?.arguments || "";
          renderCalls(calls, toolCalls);
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
  } catch (error) {
    if (error.name === "AbortError") {
      finish = "stopped";
    } else {
      showError(error.message);
    }
  } finally {
    controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
  const turn = { role: "assistant", content: text_ };
  if (toolCalls.length) {
    turn.tool_calls = toolCalls.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } }));
  }
  history.push(turn);
  const seconds = (performance.now() - (firstToken ?? started)) / 1000;
  const parts = [finish ? `finish: ${finish}` : ""];
  if (usage) {
    parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
    if (seconds > 0 && usage.completion_tokens > 1) parts.push(`${(usage.completion_tokens / seconds).toFixed(1)} tokens/s`);
  }
  stats.textContent = parts.filter(Boolean).join(" · ");
  answer.dataset.done = finish || "done";
}

function renderCalls(element, calls) {
  element.replaceChildren(...calls.filter(Boolean).map((call) => {
    const card = document.createElement("div");
    card.className = "tool-call";
    const name = document.createElement("strong");
    name.textContent = `Tool call: ${call.name}`;
    const args = document.createElement("pre");
    try {
      args.textContent = JSON.stringify(JSON.parse(call.arguments), null, 2);
    } catch (_) {
      args.textContent = call.arguments;
    }
    card.append(name, args);
    return card;
  }));
}

// Server-sent events of a fetch response: each `data:` payload, parsed, up to [DONE].
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

// --- stored completions -------------------------------------------------------------------

async function loadStored() {
  const query = new URLSearchParams({ limit: "50", order: "desc" });
  if ($("filter-model").value.trim()) query.set("model", $("filter-model").value.trim());
  for (const [key, value] of Object.entries(pairs($("filter-metadata").value))) query.set(`metadata[${key}]`, value);
  try {
    const { data } = await (await api(`/v1/chat/completions?${query}`)).json();
    $("stored-list").replaceChildren(...data.map((completion) => {
      const item = document.createElement("li");
      const open = document.createElement("button");
      open.type = "button";
      open.className = "open";
      const when = new Date(completion.created * 1000).toLocaleString();
      const said = completion.choices[0]?.message?.content || "";
      open.textContent = `${when} · ${completion.model} · ${said.slice(0, 60)}`;
      open.dataset.id = completion.id;
      open.addEventListener("click", () => showStored(completion));
      item.append(open);
      return item;
    }));
    if (!data.length) $("stored-list").textContent = "No stored completions match.";
    showError("");
  } catch (error) {
    showError(`Stored completions: ${error.message}`);
  }
}

async function showStored(completion) {
  const detail = $("stored-detail");
  detail.replaceChildren();
  const title = document.createElement("h3");
  title.textContent = completion.id;
  const meta = document.createElement("p");
  meta.textContent = `${completion.model} · metadata ${JSON.stringify(completion.metadata || {})}`;
  detail.append(title, meta);
  const { data } = await (await api(`/v1/chat/completions/${completion.id}/messages`)).json();
  for (const message of data) {
    const element = document.createElement("div");
    element.className = `message ${message.role}`;
    element.textContent = `${message.role}: ${message.content ?? ""}`;
    detail.append(element);
  }
  const answer = document.createElement("div");
  answer.className = "message assistant";
  markdown(answer, completion.choices[0]?.message?.content || "");
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "Delete";
  remove.className = "delete";
  remove.addEventListener("click", async () => {
    await api(`/v1/chat/completions/${completion.id}`, { method: "DELETE" });
    detail.replaceChildren();
    loadStored();
  });
  detail.append(answer, remove);
}

// --- wiring -------------------------------------------------------------------------------

function showTab(stored) {
  $("chat-view").hidden = stored;
  $("stored-view").hidden = !stored;
  $("tab-chat").classList.toggle("active", !stored);
  $("tab-stored").classList.toggle("active", stored);
  if (stored) loadStored();
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || controller) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => controller?.abort());
$("clear").addEventListener("click", () => {
  history.length = 0;
  $("messages").replaceChildren();
});
$("format").addEventListener("change", () => { $("schema-box").hidden = $("format").value !== "json_schema"; });
$("model").addEventListener("change", () => { localStorage.setItem("model", $("model").value); showState(); });
$("api-key").value = localStorage.getItem("apiKey") || "";
$("api-key").addEventListener("change", () => { localStorage.setItem("apiKey", $("api-key").value); loadModels(); });
$("tab-chat").addEventListener("click", () => showTab(false));
$("tab-stored").addEventListener("click", () => showTab(true));
$("stored-filter").addEventListener("submit", (event) => { event.preventDefault(); loadStored(); });

loadModels();
setInterval(loadModels, 5000);
