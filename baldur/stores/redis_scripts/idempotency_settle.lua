-- Settle a claim (policies/idempotency.py: complete, renew, abort), if the token still holds it.
-- KEYS: 1 the record. ARGV: 1 now, 2 token, 3 'complete' | 'renew' | 'abort', 4 result, 5 seconds (ttl or lease).
-- Returns 1 if the claim was ours, else 0.
local now_us = clock(ARGV[1])
local now = now_us / 1000000
local r = redis.call('HMGET', KEYS[1], 'tok', 'res', 'until')
if r[1] ~= ARGV[2] or r[2] ~= false or (tonumber(r[3]) or 0) <= now then return 0 end
local action = ARGV[3]
if action == 'abort' then
  redis.call('DEL', KEYS[1])
  return 1
end
local seconds = tonumber(ARGV[5])
if action == 'complete' then
  redis.call('HSET', KEYS[1], 'res', ARGV[4], 'until', fmt(now + seconds))
else
  redis.call('HSET', KEYS[1], 'until', fmt(now + seconds))
end
redis.call('PEXPIRE', KEYS[1], math.ceil(seconds * 1000) + 1000)
return 1
