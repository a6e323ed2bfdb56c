-- Shared by every Baldur script: the clock, number formatting, GCRA and the
-- limits' step of admission (the breaker state machine is in _breaker.lua, for
-- the scripts that need it). These mirror baldur/policies/*.py rule for rule
-- (same operations in the same order, so the same IEEE doubles); the test
-- suite runs the same sequences against both stores and expects identical
-- decisions. BUCKETS and the admission codes are defined by Python
-- (baldur/stores/_decisions.py: lua_constants), prepended to every script.

-- Now in integer microseconds: the caller's (tests), else the server's TIME. Doubles
-- hold integers exactly below 2^53 (285 years of microseconds); a float of seconds
-- since the epoch would have 0.24 µs spacing and drift under addition.
local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Round-trips a double exactly (Lua's tostring keeps only 14 digits).
local function fmt(x)
  return string.format('%.17g', x)
end

-- GCRA -------------------------------------------------------------------
-- policies/rate_limit.py's gcra: integer microseconds throughout. The times are
-- answered as integers (exact below 2^53, and no formatting to pay for); Python
-- makes the one division into seconds, so both stores give the same doubles.

local function remaining_units(slack, interval)
  if slack >= 0 then return math.floor(slack / interval) + 1 end
  return 0
end

-- Spends one unit of the limit stored at key (now, interval, tolerance in µs), and,
-- when want > 1, may hand the caller an advance: want units in all, the first for this
-- call, the others the slots after it, for the caller's process to spend on its own
-- (policies/rate_limit.py, Advance: each only until its slot). Only to a client ahead
-- of its sustained rate, and only while half its burst stays free after it: near the
-- limit every unit is asked for. First, give units of an earlier advance back: the last
-- ones, unspent, if the stored TAT is still the one that advance left (nothing taken since).
-- Returns allowed (0/1), remaining, retry_after, next_after, reset_after (µs), as if one
-- unit were spent, then the units taken, the first unit's slot after now (µs) and the
-- TAT stored (what a give-back must find).
local function gcra(key, now, interval, tolerance, want, give, expected)
  local stored = redis.call('GET', key)
  if give > 0 and stored == expected then
    local given_back = tonumber(expected) - give * interval
    stored = string.format('%.0f', given_back)
    redis.call('SET', key, stored, 'PX', math.ceil(math.max(given_back - now, 0) / 1000) + 1000)
  end
  local tat = tonumber(stored)
  local base = now
  if tat ~= nil and tat >= now then base = tat end
  local new_tat = base + interval
  local allow_at = new_tat - tolerance - interval
  if allow_at > now then
    local wait = allow_at - now
    return 0, remaining_units(tolerance - (base - now), interval), wait, wait, base - now, 0, 0, ''
  end
  local slack = tolerance - (new_tat - now)
  local next_after
  if slack >= 0 then next_after = interval - slack % interval else next_after = -slack end
  local units = 1
  if want > 1 and base > now and remaining_units(tolerance - (base + want * interval - now), interval)
      >= math.ceil((math.floor(tolerance / interval) + 1) / 2) then
    units = want
  end
  local tat_after = base + units * interval
  stored = string.format('%.0f', tat_after)
  redis.call('SET', key, stored, 'PX', math.ceil((tat_after - now) / 1000) + 1000)
  return 1, remaining_units(slack, interval), 0, next_after, new_tat - now, units, base - now, stored
end

-- Admission's limits ------------------------------------------------------
-- The part of admission before the breaker: an extra rate limit (a web
-- adapter's per-client limit), the plan's rate limit, then a concurrency lease.
-- KEYS: 1 rate TAT, 2 concurrency leases (zset, score = expiry), 4 extra TAT
-- ARGV: 1 now in µs ('' = server clock)
--       2 rate interval in µs (0 = no limit), 3 rate tolerance in µs
--       4 concurrency limit (0 = none), 5 lease id, 6 lease seconds
--       7 extra interval in µs (0 = none), 8 extra tolerance in µs
-- extra_units, give, expected: the advance of the extra limit wanted (1: none), and the
-- units of an earlier one given back (gcra's).
-- Returns the refusal (admit.lua's reply) if a limit refuses, else nil and what
-- admission goes on with: now (seconds), the rate limit's remaining, next_after
-- and reset_after, whether a lease was taken, and the extra limit's figures
-- (gcra's eight).

local function spend_limits(extra_units, give, expected)
  local now_us = clock(ARGV[1])
  local now = now_us / 1000000
  local extra = {1, 0, 0, 0, 0, 1, 0, ''}
  local extra_interval = tonumber(ARGV[7])
  if extra_interval > 0 then
    extra = {gcra(KEYS[4], now_us, extra_interval, tonumber(ARGV[8]), extra_units, give, expected)}
    local allowed, e_retry = extra[1], extra[3]
    if allowed == 0 then
      return {EXTRA_RATE_LIMITED, 0, e_retry, 0, 0, 0, '', unpack(extra)}
    end
  end
  local interval = tonumber(ARGV[2])
  local remaining, retry_after, next_after, reset_after = 0, 0, 0, 0
  if interval > 0 then
    local allowed
    allowed, remaining, retry_after, next_after, reset_after = gcra(KEYS[1], now_us, interval, tonumber(ARGV[3]), 1, 0, '')
    if allowed == 0 then
      return {RATE_LIMITED, remaining, retry_after, next_after, reset_after, 0, '', unpack(extra)}
    end
  end
  local limit = tonumber(ARGV[4])
  local holds = false
  if limit > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt(now))
    if redis.call('ZCARD', KEYS[2]) >= limit then
      return {OVERLOADED, remaining, 0, next_after, reset_after, 0, '', unpack(extra)}
    end
    local lease_for = tonumber(ARGV[6])
    redis.call('ZADD', KEYS[2], fmt(now + lease_for), ARGV[5])
    redis.call('EXPIRE', KEYS[2], math.ceil(lease_for) + 1)
    holds = true
  end
  return nil, {now = now, remaining = remaining, next_after = next_after, reset_after = reset_after,
               holds = holds, extra = extra}
end
