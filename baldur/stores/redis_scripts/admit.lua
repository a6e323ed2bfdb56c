-- Admission in one step: the limits (_common.lua's spend_limits), then the
-- breaker's pre-flight (after recording this worker's written-behind successes).
-- KEYS: 1 rate TAT, 2 concurrency leases, 3 breaker hash, 4 extra TAT
-- ARGV: 1..8 spend_limits's, 9 successes written behind since the last call,
--       10..16 breaker options (see breaker_options)
-- Returns {admission, remaining, retry_after, next_after, reset_after, trial, transitions,
--          extra: allowed, remaining, retry_after, next_after, reset_after, units (1), slot (0), TAT stored,
--          the breaker's state and until after this call (for the mirror)}
--   the times in integer µs, but retry_after in seconds, as text, when the circuit is open;
--   admission: one of the codes of baldur/stores/_decisions.py (Admission), defined before this script
local refused, a = spend_limits(1, 0, '')
if refused then return refused end
local now = a.now
local o = breaker_options(ARGV, 10)
local s = br_load(KEYS[3])
local before = s.st  -- admin (issue 12): the history starts from here
local transitions = br_lapse(KEYS[3], s, now)  -- admin (issue 12): an expired forced state lapses
local pending = tonumber(ARGV[9])
if pending > 0 then transitions = transitions .. ' ' .. br_record(KEYS[3], s, now, o, 's', false, pending) end
local admitted, trial, wait, transition = br_preflight(s, now, o)
if transition ~= '' then transitions = transitions .. ' ' .. transition end
br_save(KEYS[3], s, o.ttl)
if string.find(transitions, '%S') then br_remember(KEYS[3], now, before, transitions) end  -- admin (issue 12)
local e = a.extra
if admitted == 0 then
  if a.holds then redis.call('ZREM', KEYS[2], ARGV[5]) end
  return {CIRCUIT_OPEN, a.remaining, fmt(wait), a.next_after, a.reset_after, 0, transitions,
          e[1], e[2], e[3], e[4], e[5], e[6], e[7], e[8], s.st, br_until(KEYS[3], s.st)}
end
return {ADMITTED, a.remaining, 0, a.next_after, a.reset_after, trial, transitions,
        e[1], e[2], e[3], e[4], e[5], e[6], e[7], e[8], s.st, br_until(KEYS[3], s.st)}
