"""Sliding-window counters for handshake attempts: O(1) state per key, a bounded map.

The window is ``limits``' sliding-window counter
(``SlidingWindowCounterRateLimiter``): time is cut into fixed windows of
``T`` seconds, and an attempt ``e`` seconds into the current window sees the
*weighted count*

    prev * (T - e) / T + curr

(the previous window's count, weighted by the share of it still inside the
last ``T`` seconds, as if its attempts were spread evenly, plus the current
window's). The attempt is admitted when the weighted count is below the
limit, which is ``limits``' test ``floor(weighted) + 1 <= limit``. Where
``limits`` aligns every key's windows on multiples of ``T``, here a key's
windows start at its first attempt (as ``MessageRate``'s windows start at
the first message), so limited clients are not all let back in at the same
instant, and the hint after a burst is the full window.

Unlike ``limits``, every attempt counts, rejected ones too, so a client that
keeps hammering stays out; a window's count stops at ``limit``, since more
could not change a decision in it, which keeps the pause that lets a
hammering client back in to at most one window. Each key keeps three
integers per rate, whatever the limit.

:class:`CounterStore` holds the counters of one rule in process memory, at
most ``max_keys`` of them, least recently used first out (see
docs/rate-limits.md for why eviction cannot buy an attacker anything).
:data:`ATTEMPT_SCRIPT` is the same arithmetic on a Redis hash, on Redis'
clock, in milliseconds.
"""

from __future__ import annotations

from collections import OrderedDict

from ws_guard.rules.limits.rates import Rate

#: One round trip for every rate of a key. KEYS[1] is a hash with field s
#: (the first attempt, ms) and w<i>, p<i>, c<i> (window number, previous
#: and current count) per rate; ARGV holds limit and window in ms per rate.
#: Returns {admitted, retry ms}. The hash expires with its last window.
ATTEMPT_SCRIPT = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local start = tonumber(redis.call('HGET', KEYS[1], 's'))
if not start then
  start = now
  redis.call('HSET', KEYS[1], 's', string.format('%d', start))
end
local allowed = 1
local retry = 0
local keep = 0
for i = 1, #ARGV / 2 do
  local limit = tonumber(ARGV[2 * i - 1])
  local window = tonumber(ARGV[2 * i])
  local idx = math.floor((now - start) / window)
  local v = redis.call('HMGET', KEYS[1], 'w' .. i, 'p' .. i, 'c' .. i)
  local w = tonumber(v[1])
  local p = tonumber(v[2]) or 0
  local c = tonumber(v[3]) or 0
  if w ~= idx then
    if w == idx - 1 then p = c else p = 0 end
    c = 0
  end
  local e = now - start - idx * window
  if p * (window - e) / window + c >= limit then allowed = 0 end
  c = math.min(c + 1, limit)
  local wait = 0
  if c >= limit then
    wait = window - e
  elseif p > 0 then
    wait = math.max(0, (p - limit + c) * window / p - e)
  end
  if wait > retry then retry = wait end
  local life = start + (idx + 2) * window - now
  if life > keep then keep = life end
  redis.call('HSET', KEYS[1], 'w' .. i, string.format('%d', idx), 'p' .. i, p, 'c' .. i, c)
end
redis.call('PEXPIRE', KEYS[1], keep)
return {allowed, math.ceil(retry)}
"""


class Counts:
    """One rate's counters: window number since ``start`` (the key's first
    attempt, seconds), previous and current count; ``next``: the key's next rate."""

    __slots__ = ("curr", "idx", "next", "prev", "start")

    def __init__(self, start: float, next_: Counts | None) -> None:
        self.start = start
        self.idx = 0
        self.prev = 0
        self.curr = 0
        self.next = next_


class CounterStore:
    """Per-key sliding-window counters of one rule, at most ``max_keys`` of them.

    Keys are kept in order of their last attempt (an ``OrderedDict``), so the
    first key is the least recently used. A key's counters matter until the
    end of the window after the one of its last attempt, between ``T`` and
    ``2T`` after it; :meth:`sweep` drops expired keys from the front and
    stops at the first live one, so an expired key stays at most one window
    longer than it must (and within ``max_keys`` always).
    """

    __slots__ = ("_counts", "evicted", "max_keys", "rates")

    def __init__(self, rates: tuple[Rate, ...], max_keys: int) -> None:
        self.rates = rates
        self.max_keys = max_keys
        #: Live keys dropped to stay within ``max_keys`` (expired keys are not counted).
        self.evicted = 0
        self._counts: OrderedDict[str, Counts] = OrderedDict()

    def hit(self, key: str, t: float) -> float | None:
        """Count an attempt at *t* (seconds); ``None`` admits, a number is the retry hint."""
        counts = self._counts
        head = counts.get(key)
        if head is not None and self._alive(head, t):
            counts.move_to_end(key)
        else:  # new, or expired and not swept yet: windows start again here, as in Redis
            counts.pop(key, None)
            head = Counts(t, None)
            for _ in self.rates[1:]:
                head = Counts(t, head)
            counts[key] = head
            if len(counts) > self.max_keys:
                _, oldest = counts.popitem(last=False)
                if self._alive(oldest, t):
                    self.evicted += 1
        admitted = True
        retry = 0.0
        cell = head
        elapsed = t - head.start
        # One cell per rate: the loop always leaves at the break on the last rate.
        for rate in self.rates:  # pragma: no branch
            limit, window = rate.limit, rate.window
            idx = int(elapsed // window)
            if cell.idx != idx:
                cell.prev = cell.curr if cell.idx == idx - 1 else 0
                cell.curr = 0
                cell.idx = idx
            e = elapsed - idx * window
            prev = cell.prev
            if prev * (window - e) / window + cell.curr >= limit:
                admitted = False
            curr = cell.curr = min(cell.curr + 1, limit)
            if curr >= limit:
                wait = window - e  # the next window starts from prev = limit: in just after
            elif prev:
                # prev * (window - x) / window + curr < limit from x on; written
                # so that whole numbers stay whole (60 * 1 / 3, not 60 * (1 - 2/3)).
                wait = max(0.0, (prev - limit + curr) * window / prev - e)
            else:
                wait = 0.0
            retry = max(retry, wait)
            if cell.next is None:
                break
            cell = cell.next
        return None if admitted else retry

    def _alive(self, head: Counts, t: float) -> bool:
        cell = head
        elapsed = t - head.start
        # One cell per rate: the loop always leaves at the break on the last rate.
        for rate in self.rates:  # pragma: no branch
            if int(elapsed // rate.window) <= cell.idx + 1:
                return True
            if cell.next is None:
                break
            cell = cell.next
        return False

    def sweep(self, t: float) -> int:
        """Drop keys whose counters can no longer affect a decision; returns how many."""
        counts = self._counts
        dropped = 0
        while counts:
            key = next(iter(counts))
            if self._alive(counts[key], t):
                break
            del counts[key]
            dropped += 1
        if dropped > len(counts):
            self._counts = OrderedDict(counts)  # a dict never shrinks its table; copy it
        return dropped

    def __len__(self) -> int:
        return len(self._counts)
