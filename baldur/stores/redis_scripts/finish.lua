-- The end of a call: give back its concurrency lease and record its outcome
-- (after this worker's written-behind successes, to keep their order).
-- KEYS: 1 concurrency leases, 2 breaker hash
-- ARGV: 1 now, 2 lease id ('' = none), 3 breaker on (0/1), 4..10 breaker options,
--       11 successes written behind, 12 outcome ('s', 'f', 'i', '' = none), 13 trial (0/1)
-- Returns the transitions, space-separated.
local now_us = clock(ARGV[1])
local now = now_us / 1000000
if ARGV[2] ~= '' then redis.call('ZREM', KEYS[1], ARGV[2]) end
if ARGV[3] ~= '1' then return '' end
local o = breaker_options(ARGV, 4)
local s = br_load(KEYS[2])
local before = s.st  -- admin (issue 12): the history starts from here
local transitions = ''
local pending = tonumber(ARGV[11])
if pending > 0 then transitions = br_record(KEYS[2], s, now, o, 's', false, pending) end
if ARGV[12] ~= '' then
  local t = br_record(KEYS[2], s, now, o, ARGV[12], ARGV[13] == '1', 1)
  if t ~= '' then transitions = transitions .. ' ' .. t end
end
br_save(KEYS[2], s, o.ttl)
if string.find(transitions, '%S') then br_remember(KEYS[2], now, before, transitions) end  -- admin (issue 12)
return transitions
