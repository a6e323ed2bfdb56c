-- One unit of a rate limit. KEYS: 1 TAT. ARGV: 1 now, 2 interval, 3 tolerance.
-- Returns {allowed, remaining, retry_after, next_after, reset_after} (times in µs).
local now_us = clock(ARGV[1])
local allowed, remaining, retry_after, next_after, reset_after =
  gcra(KEYS[1], now_us, tonumber(ARGV[2]), tonumber(ARGV[3]))
return {allowed, remaining, retry_after, next_after, reset_after}
