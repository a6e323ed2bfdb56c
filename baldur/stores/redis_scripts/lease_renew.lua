-- Renew this process's concurrency leases that are still held (a long call
-- keeps its slot; a crashed worker's lease still lapses).
-- KEYS: 1 concurrency leases (zset, score = expiry in seconds). ARGV: 1 now, 2 lease seconds, 3.. lease ids.
-- Returns how many were renewed.
local now = clock(ARGV[1]) / 1000000
local lease_for = tonumber(ARGV[2])
local renewed = 0
for i = 3, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', fmt(now + lease_for), ARGV[i])
end
if renewed > 0 then redis.call('EXPIRE', KEYS[1], math.ceil(lease_for) + 1) end
return renewed
