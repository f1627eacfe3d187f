// Runs the shared case table (tests/data/reconnect_cases.json) through
// examples/static/reconnect.js. Used by node and by headless Chromium; the
// Python test compares the results with the table and with ws_guard.client.

function policyFrom(lib, spec, draw, clock) {
  const options = { ...(spec || {}), random: () => draw };
  if (clock) options.clock = clock;
  return new lib.ReconnectPolicy(options);
}

function shape(decision) {
  const out = { kind: decision.type, code: decision.code, reason: decision.reason, attempt: decision.attempt };
  if (decision.type === "stop") out.why = decision.why;
  else out.delay = decision.delay;
  return out;
}

export function runCases(lib, table) {
  const cases = table.cases.map((c) => {
    try {
      const policy = policyFrom(lib, c.policy, c.random);
      return shape(policy.decide(c.code, c.reason, c.attempt, c.refreshes));
    } catch (error) {
      return { error: String(error) };
    }
  });
  const sessions = table.sessions.map((s) => {
    let now = 0;
    const session = policyFrom(lib, s.policy, s.random, () => now).session();
    const got = [];
    for (const step of s.steps) {
      now = step.at;
      if (step.op === "opened") session.opened();
      else got.push(shape(session.closed(step.code, step.reason)));
    }
    return got;
  });
  const parsing = table.parsing.map((reason) => ({
    split: lib.splitReason(reason),
    hint: lib.retryAfterHint(reason),
  }));
  const invalid = table.invalid_policies.map((spec) => {
    try {
      policyFrom(lib, spec, 0.5);
      return "accepted";
    } catch (error) {
      return error instanceof RangeError || error instanceof TypeError ? "refused" : String(error);
    }
  });
  return { cases, sessions, parsing, invalid };
}

// Draws `draws` back-off delays per attempt 1..12 with the policy's own random
// source (Math.random by default) and returns every delay outside the promised
// range: [step, min(cap, 2 * step)] without a hint, [hint, max(cap, hint)] with
// one (step = min(cap, initial * factor ** (n - 1))). An empty list passes.
export function backoffBounds(lib, draws) {
  const cap = 60;
  const policy = new lib.ReconnectPolicy({ cap });
  const out = [];
  const codes = [1001, 1006, 1011, 1013, 1014, 4000];
  for (let attempt = 1; attempt <= 12; attempt += 1) {
    const step = Math.min(cap, 2 ** (attempt - 1));
    const ceiling = Math.min(cap, 2 * step);
    for (let i = 0; i < draws; i += 1) {
      const code = codes[i % codes.length];
      const plain = policy.decide(code, "", attempt).delay;
      if (!(plain >= step && plain <= ceiling)) out.push({ code, attempt, delay: plain });
      const hinted = policy.decide(code, "overloaded; retry-after=7", attempt).delay;
      if (!(hinted >= 7 && hinted <= Math.max(cap, 7) && hinted <= 7 + step)) {
        out.push({ code, attempt, hint: 7, delay: hinted });
      }
    }
  }
  return out;
}
