-- Admin (issue 12): force a breaker for every worker, or reset it, and remember why.
-- KEYS: 1 breaker hash.
-- ARGV: 1 now in µs ('' = server clock), 2 target ('closed' = reset, 'forced_open', 'forced_closed'),
--       3 seconds until it lapses (0 = until reset), 4 reason, 5 key id, 6 ttl of a forced state (s),
--       7 the cause the history shows
-- Returns {now, forced until (0 = none)}
local now = clock(ARGV[1]) / 1000000
local before = redis.call('HGET', KEYS[1], 'st') or 'closed'
local target = ARGV[2]
local ends = 0
redis.call('DEL', KEYS[1])
if target ~= 'closed' then
  local lasts = tonumber(ARGV[3])
  if lasts > 0 then ends = now + lasts end
  redis.call('HSET', KEYS[1], 'st', target, 'fu', fmt(ends), 'fr', ARGV[4], 'fb', ARGV[5], 'fa', fmt(now))
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
end
br_history(KEYS[1], now, before, target, ARGV[7])
br_publish(KEYS[1], target)  -- every worker's mirror takes the forced state (or the reset) at once
return {fmt(now), fmt(ends)}
