-- Admin (issue 12): read one breaker for the admin API; an expired forced state lapses here too.
-- KEYS: 1 breaker hash. ARGV: 1 now in µs ('' = server clock), 2 bucket width (s), 3 breaker ttl (s)
-- Returns {state, opened at, calls, failures, forced until, reason, by, forced at, lapsed (0/1)}
local now = clock(ARGV[1]) / 1000000
local s = br_load(KEYS[1])
local before = s.st
local lapsed = br_lapse(KEYS[1], s, now)
if lapsed ~= '' then
  br_save(KEYS[1], s, tonumber(ARGV[3]))
  br_remember(KEYS[1], now, before, lapsed)
end
local calls, failures = win_totals(KEYS[1], now, tonumber(ARGV[2]))
local f = redis.call('HMGET', KEYS[1], 'fu', 'fr', 'fb', 'fa')
return {s.st, fmt(s.oa), calls, failures, f[1] or '0', f[2] or '', f[3] or '', f[4] or '0', lapsed ~= '' and 1 or 0}
