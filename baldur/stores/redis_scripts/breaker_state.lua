-- Read a breaker's state, or force it. KEYS: 1 breaker hash.
-- ARGV: 1 '' to read, else the target: 'closed' (reset), 'forced_open', 'forced_closed'; 2 ttl seconds.
if ARGV[1] == '' then
  return redis.call('HGET', KEYS[1], 'st') or 'closed'
end
redis.call('DEL', KEYS[1])
if ARGV[1] ~= 'closed' then
  redis.call('HSET', KEYS[1], 'st', ARGV[1])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
br_publish(KEYS[1], ARGV[1])
return ARGV[1]
