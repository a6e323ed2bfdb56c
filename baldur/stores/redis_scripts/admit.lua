-- Admission in one step: an extra rate limit (a web adapter's per-client
-- limit), the plan's rate limit, then a concurrency lease, then the breaker's
-- pre-flight (after recording this worker's written-behind successes).
-- KEYS: 1 rate TAT, 2 concurrency leases (zset, score = expiry), 3 breaker hash, 4 extra TAT
-- ARGV: 1 now in µs ('' = server clock)
--       2 rate interval in µs (0 = no limit), 3 rate tolerance in µs
--       4 concurrency limit (0 = none), 5 lease id, 6 lease seconds
--       7 breaker on (0/1), 8..14 breaker options (see breaker_options)
--       15 successes written behind since the last call
--       16 extra interval in µs (0 = none), 17 extra tolerance in µs
-- Returns {admission, remaining, retry_after, next_after, reset_after, trial, transitions,
--          extra: allowed, remaining, retry_after, next_after, reset_after,
--          (the times in integer µs, but retry_after in seconds as text when the circuit is open)
--          the breaker's state and until after this call (for the mirror; only when it was read)}
--   admission: one of the codes of baldur/stores/_decisions.py (Admission), defined before this script
local now_us = clock(ARGV[1])
local now = now_us / 1000000
local extra = {1, 0, '0', '0', '0'}
local extra_interval = tonumber(ARGV[16])
if extra_interval > 0 then
  local allowed, e_remaining, e_retry, e_next, e_reset = gcra(KEYS[4], now_us, extra_interval, tonumber(ARGV[17]))
  extra = {allowed, e_remaining, e_retry, e_next, e_reset}
  if allowed == 0 then
    return {EXTRA_RATE_LIMITED, 0, e_retry, 0, 0, 0, '', unpack(extra)}
  end
end
local interval = tonumber(ARGV[2])
local remaining, retry_after, next_after, reset_after = 0, 0, 0, 0
if interval > 0 then
  local allowed
  allowed, remaining, retry_after, next_after, reset_after = gcra(KEYS[1], now_us, interval, tonumber(ARGV[3]))
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
local trial, transitions = 0, ''
if ARGV[7] == '1' then
  local o = breaker_options(ARGV, 8)
  local s = br_load(KEYS[3])
  local before = s.st  -- admin (issue 12): the history starts from here
  transitions = br_lapse(KEYS[3], s, now)  -- admin (issue 12): an expired forced state lapses
  local pending = tonumber(ARGV[15])
  if pending > 0 then transitions = transitions .. ' ' .. br_record(KEYS[3], s, now, o, 's', false, pending) end
  local admitted, wait, transition
  admitted, trial, wait, transition = br_preflight(s, now, o)
  if transition ~= '' then transitions = transitions .. ' ' .. transition end
  br_save(KEYS[3], s, o.ttl)
  if string.find(transitions, '%S') then br_remember(KEYS[3], now, before, transitions) end  -- admin (issue 12)
  if admitted == 0 then
    if holds then redis.call('ZREM', KEYS[2], ARGV[5]) end
    return {CIRCUIT_OPEN, remaining, fmt(wait), next_after, reset_after, 0, transitions,
            extra[1], extra[2], extra[3], extra[4], extra[5], s.st, br_until(KEYS[3], s.st)}
  end
  return {ADMITTED, remaining, 0, next_after, reset_after, trial, transitions,
          extra[1], extra[2], extra[3], extra[4], extra[5], s.st, br_until(KEYS[3], s.st)}
end
return {ADMITTED, remaining, 0, next_after, reset_after, trial, transitions, unpack(extra)}
