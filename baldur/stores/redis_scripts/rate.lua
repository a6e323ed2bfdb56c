-- One unit of a rate limit, or an advance of several (gcra in _common.lua).
-- KEYS: 1 TAT. ARGV: 1 now, 2 interval, 3 tolerance, 4 units wanted, 5 units given
-- back, 6 the TAT they must find (4..6 absent: 1, 0, '').
-- Returns gcra's {allowed, remaining, retry_after, next_after, reset_after, units,
-- first slot, TAT stored} (times in µs).
local now_us = clock(ARGV[1])
return {gcra(KEYS[1], now_us, tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4] or '1'),
             tonumber(ARGV[5] or '0'), ARGV[6] or '')}
