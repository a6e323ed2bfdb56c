-- The breaker state machine and its history, for the scripts that read or
-- change a breaker (prepended after _common.lua). Mirrors baldur/policies/breaker.py.

-- Breaker ----------------------------------------------------------------
-- One hash per breaker: st (state), oa (opened at), cf (consecutive
-- failures), ti/ts (half-open trials issued/succeeded), hs (half-open since),
-- and the window's buckets eN (epoch), cN (calls), fN (failures).

local function breaker_options(argv, i)
  return {
    failure_rate = tonumber(argv[i]), min_calls = tonumber(argv[i + 1]), width = tonumber(argv[i + 2]),
    consecutive = tonumber(argv[i + 3]), open_for = tonumber(argv[i + 4]),
    half_open_calls = tonumber(argv[i + 5]), ttl = tonumber(argv[i + 6]),
  }
end

local function br_load(key)
  local v = redis.call('HMGET', key, 'st', 'oa', 'cf', 'ti', 'ts', 'hs')
  local st = v[1] or 'closed'
  return {
    st = st, oa = tonumber(v[2]) or 0, cf = tonumber(v[3]) or 0,
    ti = tonumber(v[4]) or 0, ts = tonumber(v[5]) or 0, hs = tonumber(v[6]) or 0, dirty = false, was = st,
  }
end

-- The mirror (redis.py): every worker keeps a copy of each breaker's state record and
-- admits a closed breaker's calls without asking Redis, so every change of state is
-- published, in the order Redis made it, on <prefix>:breakers as '<state> <until> <key>'
-- (until: when a forced state lapses, epoch seconds of the server clock; 0 = never).
local function br_until(key, st)
  if string.sub(st, 1, 7) ~= 'forced_' then return '0' end
  return redis.call('HGET', key, 'fu') or '0'
end

local function br_publish(key, st)
  local prefix = string.match(key, '^(.*):{[^{}]*}:b$')
  if prefix ~= nil then
    redis.call('PUBLISH', prefix .. ':breakers', st .. ' ' .. br_until(key, st) .. ' ' .. key)
  end
end

local function br_save(key, s, ttl)
  if s.dirty then
    redis.call('HSET', key, 'st', s.st, 'oa', fmt(s.oa), 'cf', s.cf, 'ti', s.ti, 'ts', s.ts, 'hs', fmt(s.hs))
  end
  -- A forced state keeps the TTL its force gave it (admin: it outlives the window's TTL);
  -- EXPIRE is a no-op on a breaker that has no hash yet.
  if string.sub(s.st, 1, 7) ~= 'forced_' then redis.call('EXPIRE', key, ttl) end
  if s.st ~= s.was then
    br_publish(key, s.st)
    s.was = s.st
  end
end

local function win_add(key, now, width, failed, count)
  local epoch = math.floor(now / width)
  local i = epoch % BUCKETS
  if tonumber(redis.call('HGET', key, 'e' .. i)) ~= epoch then
    redis.call('HSET', key, 'e' .. i, epoch, 'c' .. i, 0, 'f' .. i, 0)
  end
  redis.call('HINCRBY', key, 'c' .. i, count)
  if failed then redis.call('HINCRBY', key, 'f' .. i, count) end
end

local function win_totals(key, now, width)
  local oldest = math.floor(now / width) - BUCKETS
  local fields = {}
  for i = 0, BUCKETS - 1 do
    fields[#fields + 1] = 'e' .. i
    fields[#fields + 1] = 'c' .. i
    fields[#fields + 1] = 'f' .. i
  end
  local v = redis.call('HMGET', key, unpack(fields))
  local calls, failures = 0, 0
  for i = 0, BUCKETS - 1 do
    local e = tonumber(v[3 * i + 1])
    if e ~= nil and e > oldest then
      calls = calls + (tonumber(v[3 * i + 2]) or 0)
      failures = failures + (tonumber(v[3 * i + 3]) or 0)
    end
  end
  return calls, failures
end

local function win_clear(key)
  local fields = {}
  for i = 0, BUCKETS - 1 do fields[#fields + 1] = 'e' .. i end
  redis.call('HDEL', key, unpack(fields))
end

local function br_open(key, s, now)
  s.st = 'open'; s.oa = now; s.cf = 0; s.ti = 0; s.ts = 0; s.dirty = true
  win_clear(key)
  return 'open'
end

local function br_close(key, s)
  s.st = 'closed'; s.cf = 0; s.ti = 0; s.ts = 0; s.dirty = true
  win_clear(key)
end

-- Returns admitted (0/1), trial (0/1), retry_after, transition ('' if none).
local function br_preflight(s, now, o)
  if s.st == 'closed' or s.st == 'forced_closed' then return 1, 0, 0, '' end
  if s.st == 'forced_open' then return 0, 0, o.open_for, '' end
  local transition = ''
  if s.st == 'open' then
    local wait = s.oa + o.open_for - now
    if wait > 0 then return 0, 0, wait, '' end
    s.st = 'half_open'; s.hs = now; s.ti = 0; s.ts = 0; s.dirty = true
    transition = 'half_open'
  elseif s.ti >= o.half_open_calls and now - s.hs >= o.open_for then
    -- Trial permits are leases: after open_for, lost ones are taken back.
    s.hs = now; s.ti = s.ts; s.dirty = true
  end
  if s.ti < o.half_open_calls then
    s.ti = s.ti + 1; s.dirty = true
    return 1, 1, 0, transition
  end
  return 0, 0, math.min(1.0, o.open_for), transition
end

-- outcome: 's' success, 'f' failure, 'i' ignored; count > 1 only for successes
-- written behind. The failure rate is checked after every outcome; for a batch
-- of successes, after each of them: the share is highest where the count of
-- calls first reaches min_calls, so that is the one point to check.
-- Returns the new state if it changed, else ''.
local function br_record(key, s, now, o, outcome, trial, count)
  if s.st == 'closed' then
    if trial or outcome == 'i' then return '' end
    local failed = outcome == 'f'
    win_add(key, now, o.width, failed, count)
    if failed then
      s.cf = s.cf + 1; s.dirty = true
      if o.consecutive > 0 and s.cf >= o.consecutive then return br_open(key, s, now) end
    elseif s.cf ~= 0 then
      s.cf = 0; s.dirty = true
    end
    if o.failure_rate >= 0 then
      local calls, failures = win_totals(key, now, o.width)
      if calls >= o.min_calls and failures / math.max(o.min_calls, calls - count + 1) >= o.failure_rate then
        return br_open(key, s, now)
      end
    end
    return ''
  end
  if s.st == 'half_open' and trial then
    if outcome == 'f' then return br_open(key, s, now) end
    if outcome == 'i' then
      s.ti = math.max(0, s.ti - 1); s.dirty = true
      return ''
    end
    s.ts = s.ts + 1; s.dirty = true
    if s.ts >= o.half_open_calls then
      br_close(key, s)
      return 'closed'
    end
  end
  return ''
end

-- Admin (issue 12) -----------------------------------------------------------
-- A forced state may carry an expiry (hash field fu, epoch seconds of the
-- server clock) and the operator's why (fr reason, fb key id, fa when). Recent
-- transitions of a breaker are kept newest first in the list <breaker key>
-- with its last letter 'b' replaced by 't' (same hash tag, same slot).

local HISTORY_LENGTH = 50
local HISTORY_TTL = 30 * 86400
local CAUSES = {
  ['closed>open'] = 'failure rate or consecutive failures reached',
  ['half_open>open'] = 'a trial failed',
  ['open>half_open'] = 'open_for elapsed',
  ['half_open>closed'] = 'half_open_calls trials succeeded',
}

local function br_history_key(key)
  return string.sub(key, 1, -2) .. 't'
end

local function br_history(key, now, from, to, cause)
  local hkey = br_history_key(key)
  redis.call('LPUSH', hkey, cjson.encode({at = now, from = from, to = to, cause = cause}))
  redis.call('LTRIM', hkey, 0, HISTORY_LENGTH - 1)
  redis.call('EXPIRE', hkey, HISTORY_TTL)
end

-- Each of ``transitions`` (space-separated, in order) went from the state before it.
local function br_remember(key, now, from, transitions)
  for to in string.gmatch(transitions, '%S+') do
    local cause = CAUSES[from .. '>' .. to]
    if string.sub(from, 1, 7) == 'forced_' then cause = 'forced state expired' end
    br_history(key, now, from, to, cause or '')
    from = to
  end
end

-- A forced state whose expiry has passed returns the breaker to its own rule (closed, empty window).
-- Returns 'closed' if it lapsed, else ''.
local function br_lapse(key, s, now)
  if string.sub(s.st, 1, 7) ~= 'forced_' then return '' end
  local ends = tonumber(redis.call('HGET', key, 'fu'))
  if ends == nil or ends <= 0 or now < ends then return '' end
  redis.call('HDEL', key, 'fu', 'fr', 'fb', 'fa')
  s.st = 'closed'; s.cf = 0; s.ti = 0; s.ts = 0; s.dirty = true
  win_clear(key)
  return 'closed'
end
