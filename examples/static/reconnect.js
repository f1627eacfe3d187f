// ws_guard reconnect policy for browsers: reconnect as each close code asks.
//
// A dependency-free ES module with the same table as ws_guard.client (Python):
//   1013 (and other 1001s, 1006, 1011, 1014, unknown codes): exponential back-off:
//        attempt n waits uniform [step, 2 * step] with step = 1 s * 2^(n-1),
//        both capped (60 s); with the server's "retry-after=<seconds>" hint,
//        the hint plus uniform [0, step];
//   1012: a short random delay (0-5 s) after the hint;
//   1001 "max_lifetime": the hint plus up to 1 s, not counted as an attempt
//        (a planned end: the next back-off starts from 1 s again);
//   1001 "idle_timeout": stop; reconnect when the app has something to send;
//   1008 "token_expired": get a fresh token, reconnect at once (back off on
//        repeats, stop after 3 refreshes in a row);
//   1008 "banned": the hint (when the ban ends) plus up to 1 s;
//   1008 other reasons, 1000, 1002, 1003, 1005, 1007, 1009, 1010, 1015: stop.
// A private-range twin (code + 3000: 4001-4003, 4007-4014), which ws_guard sends
// on servers that refuse RFC codes (daphne), is treated as its RFC code.
// The attempt counter resets once a connection stayed open for `stableAfter` s.
//
//   import { connect } from "/static/reconnect.js";
//   const conn = connect("ws://host/ws", {
//     tokenProvider: async () => (await fetch("/token")).text(),
//     tokenSource: "subprotocol", tokenName: "bearer",
//     onOpen: (ws) => ws.send("hi"), onMessage: (event) => show(event.data),
//     onDecision: (d) => show(`${d.code} ${d.reason}: ${d.type} ${d.delay ?? ""}`),
//   });
//   conn.close();  // stop for good

const SECONDS = /^[0-9]{1,12}(\.[0-9]{1,6})?$/;

/** Split "overloaded; retry-after=3" into the slug and its key=value hints. */
export function splitReason(reason) {
  const text = String(reason ?? "");
  const cut = text.indexOf(";");
  const slug = (cut < 0 ? text : text.slice(0, cut)).trim();
  const hints = {};
  if (cut >= 0) {
    for (const part of text.slice(cut + 1).split(";")) {
      const eq = part.indexOf("=");
      if (eq < 0) continue;
      const key = part.slice(0, eq).trim().toLowerCase();
      if (!(key in hints)) hints[key] = part.slice(eq + 1).trim();
    }
  }
  return { slug, hints };
}

export function reasonSlug(reason) {
  return splitReason(reason).slug;
}

/** The retry-after hint in seconds, or null when absent or malformed. */
export function retryAfterHint(reason) {
  const value = splitReason(reason).hints["retry-after"];
  return value !== undefined && SECONDS.test(value) ? Number(value) : null;
}

// -- private-range twins (ws_guard/_core/twins.py) ---------------------------
/** RFC codes ws_guard twins as code + 3000 where a server refuses them. */
export const TWINNED_CODES = Object.freeze([
  1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
]);

/** The RFC code a twin stands for (4009 -> 1009); any other code unchanged. */
export function rfcCode(code) {
  const original = code - 3000;
  return TWINNED_CODES.includes(original) ? original : code;
}

// -- actions ---------------------------------------------------------------
export const backoff = (initial = 1, factor = 2) => ({ action: "backoff", initial, factor });
// planned: a close the server planned (1001 max_lifetime), not a failure: no attempt counted.
export const randomDelay = (low = 0, high = 5, planned = false) => ({
  action: "random_delay",
  low,
  high,
  planned,
});
export const refreshToken = (maxRefreshes = 3, then = backoff()) => ({
  action: "refresh_token",
  maxRefreshes,
  backoff: then,
});
export const noRetry = (why = "") => ({ action: "no_retry", why });

export const DEFAULT_ACTIONS = Object.freeze({
  1000: noRetry("the server closed the connection normally"),
  1001: backoff(),
  "1001:max_lifetime": randomDelay(0, 1, true),
  "1001:idle_timeout": noRetry("the server closed an idle connection: reconnect when there is something to send"),
  1002: noRetry("protocol error: the same client would fail again"),
  1003: noRetry("the server does not accept this data type: fix the client"),
  1005: noRetry("the server closed the connection without a code"),
  1006: backoff(),
  1007: noRetry("invalid message data: fix the client"),
  1008: noRetry("policy violation: the server would refuse a retry again"),
  "1008:token_expired": refreshToken(),
  "1008:banned": randomDelay(0, 1),
  1009: noRetry("message too big: fix the client"),
  1010: noRetry("the server lacks an extension the client requires"),
  1011: backoff(),
  1012: randomDelay(),
  1013: backoff(),
  1014: backoff(),
  1015: noRetry("TLS handshake failed"),
});

const ACTIONS = new Set(["backoff", "random_delay", "refresh_token", "no_retry"]);

function checkNumber(what, value, { minimum = 0, strict = false } = {}) {
  const ok =
    typeof value === "number" &&
    Number.isFinite(value) &&
    (strict ? value > minimum : value >= minimum);
  if (!ok) throw new RangeError(`${what} must be a finite number ${strict ? ">" : ">="} ${minimum}, not ${value}`);
  return value;
}

// Seconds, not milliseconds: the same bounds as ws_guard.client (Python).
function checkSeconds(what, value, maximum) {
  if (value > maximum) throw new RangeError(`${what} is in seconds (at most ${maximum}); ${value} looks like milliseconds`);
  return value;
}

function checkAction(what, action) {
  if (!action || !ACTIONS.has(action.action)) {
    throw new TypeError(`${what} must be backoff(), randomDelay(), refreshToken() or noRetry()`);
  }
  if (action.action === "backoff") {
    checkSeconds(`${what} initial`, checkNumber(`${what} initial`, action.initial, { strict: true }), 600);
    checkNumber(`${what} factor`, action.factor, { minimum: 1 });
  } else if (action.action === "random_delay") {
    checkNumber(`${what} low`, action.low);
    checkSeconds(`${what} high`, checkNumber(`${what} high`, action.high, { minimum: action.low }), 600);
    if (action.planned !== undefined && typeof action.planned !== "boolean") {
      throw new TypeError(`${what} planned must be true or false, not ${action.planned}`);
    }
  } else if (action.action === "refresh_token") {
    if (!Number.isInteger(action.maxRefreshes) || action.maxRefreshes < 1) {
      throw new RangeError(`${what} maxRefreshes must be an integer >= 1`);
    }
    checkAction(`${what} backoff`, action.backoff);
  }
  return action;
}

/** Decides, per close, whether and when to reconnect. Decisions are plain objects:
 * {type: "retry" | "refresh_then_retry" | "stop", delay, code, reason, attempt, why}. */
export class ReconnectPolicy {
  constructor({
    overrides = {},
    fallback = backoff(),
    cap = 60,
    stableAfter = 30,
    maxAttempts = null,
    maxHint = 3600,
    random = Math.random,
    clock = () => performance.now() / 1000,
  } = {}) {
    this.cap = checkSeconds("cap", checkNumber("cap", cap, { strict: true }), 3600);
    // stableAfter 0 would reset the attempt count on every accept-then-close, so
    // back-off would never grow; maxHint 0 would throw away every retry-after.
    this.stableAfter = checkSeconds("stableAfter", checkNumber("stableAfter", stableAfter, { strict: true }), 3600);
    this.maxHint = checkSeconds("maxHint", checkNumber("maxHint", maxHint, { strict: true }), 86400);
    if (maxAttempts !== null && (!Number.isInteger(maxAttempts) || maxAttempts < 1)) {
      throw new RangeError(`maxAttempts must be null or an integer >= 1, not ${maxAttempts}`);
    }
    this.maxAttempts = maxAttempts;
    this.fallback = checkAction("fallback", fallback);
    this.overrides = {};
    for (const [key, action] of Object.entries(overrides)) {
      if (!/^[1-4][0-9]{3}(:.*)?$/.test(key)) {
        throw new TypeError(`override keys must be "code" or "code:reason", not ${key}`);
      }
      this.overrides[key] = checkAction(`override ${key}`, action);
    }
    this.random = random;
    this.clock = clock;
  }

  actionFor(code, slug) {
    const rfc = rfcCode(code);
    if (rfc !== code) {
      // An override naming the twin itself (4001: the app's own meaning) comes first.
      const own =
        this.overrides[`${code}:${slug}`] ??
        this.overrides[`${code}:${slug.split(":")[0]}`] ??
        this.overrides[String(code)];
      if (own !== undefined) return own;
      code = rfc;
    }
    const specific = `${code}:${slug}`;
    // A slug of a family ("rate_limited:chat") falls back to the family's.
    const family = `${code}:${slug.split(":")[0]}`;
    return (
      this.overrides[specific] ??
      DEFAULT_ACTIONS[specific] ??
      this.overrides[family] ??
      DEFAULT_ACTIONS[family] ??
      this.overrides[String(code)] ??
      DEFAULT_ACTIONS[String(code)] ??
      this.fallback
    );
  }

  /** True when the table says code/reason is a planned end (randomDelay(..., true)). */
  isPlanned(code, reason) {
    const action = this.actionFor(code, reasonSlug(String(reason ?? "")));
    return action.action === "random_delay" && action.planned === true;
  }

  decide(code, reason, attempt, refreshes = 0) {
    reason = String(reason ?? "");
    const action = this.actionFor(code, reasonSlug(reason));
    const base = { code, reason, attempt };
    if (action.action === "no_retry") {
      return { type: "stop", ...base, why: action.why || `no retry after close code ${code}` };
    }
    let hint = retryAfterHint(reason);
    if (hint !== null) hint = Math.min(hint, this.maxHint);
    if (action.action === "refresh_token") {
      if (refreshes >= action.maxRefreshes) {
        return { type: "stop", ...base, why: `the token was still refused after ${refreshes} refreshes` };
      }
      const delay =
        refreshes === 0 ? this.#afterHint(0, hint) : this.#backoff(action.backoff, refreshes, hint);
      return { type: "refresh_then_retry", delay, ...base };
    }
    const planned = action.action === "random_delay" && action.planned === true;
    // A planned end is no failure: maxAttempts is not spent on it.
    if (!planned && this.maxAttempts !== null && attempt > this.maxAttempts) {
      return { type: "stop", ...base, why: `gave up after ${this.maxAttempts} reconnect attempts` };
    }
    if (action.action === "backoff") {
      return { type: "retry", delay: this.#backoff(action, attempt, hint), ...base };
    }
    const delay = action.low + this.random() * (action.high - action.low);
    return { type: "retry", delay: this.#afterHint(delay, hint), ...base };
  }

  session() {
    return new ReconnectSession(this);
  }

  // The floor of back-off attempt n (1-based): min(cap, initial * factor ** (n - 1)).
  #step(action, attempt) {
    return Math.min(this.cap, action.initial * action.factor ** (attempt - 1));
  }

  // No hint: uniform in [step, min(cap, 2 * step)], never back early, a herd
  // spreads over one more step; at the cap, exactly the cap. With a hint: the
  // hint plus uniform [0, step], at most max(cap, hint). One random draw.
  #backoff(action, attempt, hint) {
    const step = this.#step(action, attempt);
    if (hint !== null) return this.#afterHint(this.random() * step, hint);
    const ceiling = Math.min(this.cap, 2 * step);
    return step + this.random() * (ceiling - step);
  }

  // Never before the hint; jitter on top of it; at most the cap (or the hint).
  #afterHint(delay, hint) {
    if (hint === null) return Math.min(delay, this.cap);
    return Math.min(hint + delay, Math.max(this.cap, hint));
  }
}

/** The attempt counter of one client; resets after a stable connection. */
export class ReconnectSession {
  constructor(policy) {
    this.policy = policy;
    this.attempt = 0;
    this.refreshes = 0;
    this.openedAt = null;
  }

  opened() {
    this.openedAt = this.policy.clock();
  }

  closed(code, reason) {
    const openedAt = this.openedAt;
    this.openedAt = null;
    if (openedAt !== null && this.policy.clock() - openedAt >= this.policy.stableAfter) this.reset();
    if (this.policy.isPlanned(code, reason)) {
      // The server ended a working connection on purpose: a new run, as after
      // a stable connection; the decision's attempt is 0.
      this.reset();
      return this.policy.decide(code, reason, 0);
    }
    this.attempt += 1;
    const decision = this.policy.decide(code, reason, this.attempt, this.refreshes);
    if (decision.type === "refresh_then_retry") this.refreshes += 1;
    return decision;
  }

  reset() {
    this.attempt = 0;
    this.refreshes = 0;
  }
}

/** Keep a WebSocket connected as the policy allows.
 *
 * tokenSource "query" adds ?<tokenName>=<token> (default name "token");
 * "subprotocol" offers the protocols [tokenName, token] (tokenName is the marker the
 * server's rules.from_subprotocol(marker) expects). Browsers cannot send headers.
 * Returns {socket, session, close(), done}: `done` resolves with the final decision
 * (or null after close()). Browsers report a handshake refused over HTTP as 1006. */
export function connect(url, options = {}) {
  const {
    policy = new ReconnectPolicy(),
    tokenProvider = null,
    tokenSource = "query",
    tokenName = tokenSource === "query" ? "token" : null,
    protocols = [],
    binaryType = "blob",
    onOpen = null,
    onMessage = null,
    onClose = null,
    onDecision = null,
    WebSocketImpl = globalThis.WebSocket,
  } = options;
  if (tokenSource !== "query" && tokenSource !== "subprotocol") {
    throw new TypeError(`tokenSource must be "query" or "subprotocol", not ${tokenSource}`);
  }
  if (tokenSource === "subprotocol" && !tokenName) {
    throw new TypeError('tokenSource "subprotocol" needs tokenName: the marker the server expects');
  }
  const session = policy.session();
  let finish;
  const handle = {
    socket: null,
    session,
    stopped: false,
    done: new Promise((resolve) => (finish = resolve)),
    close(code = 1000, reason = "") {
      handle.stopped = true;
      clearTimeout(timer);
      if (handle.socket) handle.socket.close(code, reason);
      finish(null);
    },
  };
  let token = null;
  let timer = null;

  const target = () => {
    if (token === null) return [url, protocols];
    if (tokenSource === "subprotocol") return [url, [tokenName, token, ...protocols]];
    const withToken = new URL(url, globalThis.location?.href);
    withToken.searchParams.set(tokenName, token);
    return [withToken.toString(), protocols];
  };

  const open = async (refresh) => {
    if (handle.stopped) return;
    if (tokenProvider && (refresh || token === null)) token = await tokenProvider();
    if (handle.stopped) return;
    const [where, offered] = target();
    const ws = new WebSocketImpl(where, offered);
    ws.binaryType = binaryType;
    handle.socket = ws;
    ws.onopen = () => {
      session.opened();
      if (onOpen) onOpen(ws);
    };
    ws.onmessage = (event) => {
      if (onMessage) onMessage(event, ws);
    };
    ws.onclose = (event) => {
      if (onClose) onClose(event, ws);
      if (handle.stopped) return;
      let decision = session.closed(event.code, event.reason);
      if (decision.type === "refresh_then_retry" && !tokenProvider) {
        const why = "the token expired and there is no tokenProvider to refresh it";
        decision = { type: "stop", code: decision.code, reason: decision.reason, attempt: decision.attempt, why };
      }
      if (onDecision) onDecision(decision);
      if (decision.type === "stop") {
        handle.stopped = true;
        finish(decision);
        return;
      }
      const refresh = decision.type === "refresh_then_retry";
      timer = setTimeout(() => start(refresh), decision.delay * 1000);
    };
  };
  // A failing tokenProvider ends the loop: handle.error holds what it threw.
  const start = (refresh) =>
    open(refresh).catch((error) => {
      handle.stopped = true;
      handle.error = error;
      const why = `tokenProvider failed: ${error}`;
      finish({ type: "stop", code: null, reason: "", attempt: session.attempt, why });
    });
  start(false);
  return handle;
}
