// The example page's client: one WebSocket to /ws, a chat log and a close log.
// Plain browser JavaScript (an ES module), no build step. Reconnects follow
// reconnect.js, the same per-code policy as ws_guard.client (docs/client.md):
// 1013 backs off, 1008/1009/1003 stop, and every decision is shown in the log.
import { connect as reconnecting } from "/static/reconnect.js";

// What a client should do about each close code ws_guard sends (docs/close-codes.md).
const CLOSE_ADVICE = {
  1000: "normal closure",
  1001: "going away: reconnect after a short random delay",
  1003: "unsupported data: fix the client (this room takes text only)",
  1006: "abnormal closure: no close frame arrived (ws_guard never sends 1006)",
  1008: "policy violation: do not resend it, do not retry blindly",
  1009: "message too big: fix the client (send smaller messages)",
  1011: "server error: reconnect with back-off",
  1012: "server restarting: reconnect after a short random delay",
  1013: "try again later: back off from 1 s, doubling, with jitter",
};

const $ = (id) => document.getElementById(id);
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;

let socket = null;
let handle = null;
// Replaced by the server's "welcome" message, so the buttons break the real limits.
let limits = { maxMessageBytes: 1024, forbiddenWord: "spam" };

function addLine(listId, text, className) {
  const item = document.createElement("li");
  item.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  if (className) item.className = className;
  const list = $(listId);
  list.appendChild(item);
  list.scrollTop = list.scrollHeight;
}

function setStatus(state) {
  $("status").textContent = state;
  $("status").className = state;
  for (const button of document.querySelectorAll(".needs-open")) {
    button.disabled = state !== "open";
  }
}

function showEvent(event) {
  switch (event.type) {
    case "welcome":
      limits = { maxMessageBytes: event.max_message_bytes, forbiddenWord: event.forbidden_word };
      $("me").textContent = `(you are ${event.you})`;
      break;
    case "joined":
      addLine("chat", `${event.who} joined (${event.online} online)`, "system");
      break;
    case "left":
      addLine("chat", `${event.who} left (${event.online} online)`, "system");
      break;
    case "chat":
      addLine("chat", `${event.from}: ${event.text}`);
      break;
  }
}

function showClose(event) {
  const advice = CLOSE_ADVICE[event.code] || "see docs/close-codes.md";
  const reason = event.reason ? ` ${event.reason}` : "";
  const line = `closed ${event.code}${reason} → ${advice}`;
  addLine("closes", line, event.wasClean ? "close clean" : "close");
}

function showDecision(decision) {
  const line =
    decision.type === "stop"
      ? `policy: stop (${decision.why})`
      : `policy: ${decision.type.replaceAll("_", " ")} in ${decision.delay.toFixed(1)} s`;
  addLine("closes", line, "decision");
}

function connect() {
  setStatus("connecting");
  handle = reconnecting(wsUrl, {
    onOpen: (ws) => {
      socket = ws;
      setStatus("open");
    },
    onMessage: (message) => showEvent(JSON.parse(message.data)),
    onClose: (event, ws) => {
      showClose(event);
      if (socket === ws) setStatus("closed");
    },
    onDecision: (decision) => {
      showDecision(decision);
      if (decision.type !== "stop") setStatus("waiting");
    },
  });
}

function send(data) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(data);
}

$("send-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("message").value;
  if (text) send(text);
  $("message").value = "";
});

$("too-big").addEventListener("click", () => send("x".repeat(limits.maxMessageBytes + 1)));
$("binary").addEventListener("click", () => send(new Uint8Array([1, 2, 3])));
$("link").addEventListener("click", () => send("have a look at http://example.com"));
$("forbidden").addEventListener("click", () => send(`buy ${limits.forbiddenWord} now`));
$("flood").addEventListener("click", () => {
  for (let i = 1; i <= 30; i++) send(`flood ${i}`);
});
$("leave").addEventListener("click", () => handle && handle.close(1000, "bye"));
$("reconnect").addEventListener("click", () => {
  if (handle) handle.close(1000, "reconnecting");
  connect();
});

connect();
