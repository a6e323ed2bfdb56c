-- Claim an idempotency key, or say why not (policies/idempotency.py: begin).
-- KEYS: 1 the record (hash: fp, tok, until, res). ARGV: 1 now, 2 fingerprint, 3 token, 4 lease seconds.
-- Returns {verdict, result or '', retry_after}.
local now_us = clock(ARGV[1])
local now = now_us / 1000000
local r = redis.call('HMGET', KEYS[1], 'fp', 'tok', 'until', 'res')
local until_ = tonumber(r[3])
if r[1] == false or until_ == nil or until_ <= now then
  local lease = tonumber(ARGV[4])
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'fp', ARGV[2], 'tok', ARGV[3], 'until', fmt(now + lease))
  redis.call('PEXPIRE', KEYS[1], math.ceil(lease * 1000) + 1000)
  return {'run', '', '0'}
end
if r[1] ~= ARGV[2] then return {'mismatch', '', '0'} end
if r[4] ~= false then return {'replay', r[4], '0'} end
return {'conflict', '', fmt(until_ - now)}
