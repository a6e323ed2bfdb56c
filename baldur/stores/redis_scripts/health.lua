-- The health probe and warm-up: a write like the real scripts' (a scratch key
-- with a TTL), so a Redis that answers PING but refuses the work (out of memory,
-- a read-only replica, an ACL without the right) counts as down.
-- KEYS: 1 the scratch key. ARGV: 1 its value. Returns 1.
redis.call('SET', KEYS[1], ARGV[1], 'PX', 10000)
return 1
