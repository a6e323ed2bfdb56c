-- Shared by every Baldur script: the clock, number formatting, GCRA and the
-- breaker state machine. These mirror baldur/policies/*.py rule for rule
-- (same operations in the same order, so the same IEEE doubles); the test
-- suite runs the same sequences against both stores and expects identical
-- decisions. BUCKETS and the admission codes are defined by Python
-- (baldur/stores/_decisions.py: lua_constants), prepended to every script.

local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- Round-trips a double exactly (Lua's tostring keeps only 14 digits).
local function fmt(x)
  return string.format('%.17g', x)
end

-- GCRA -------------------------------------------------------------------

local function remaining_units(slack, interval, eps)
  if slack + eps >= 0 then return math.floor((slack + eps) / interval) + 1 end
  return 0
end

-- Spends one unit of the limit stored at key. Returns allowed (0/1),
-- remaining, retry_after, next_after, reset_after.
local function gcra(key, now, interval, tolerance)
  local tat = tonumber(redis.call('GET', key))
  local base = now
  if tat ~= nil and tat >= now then base = tat end
  local new_tat = base + interval
  local allow_at = new_tat - tolerance - interval
  -- The float slack of policies/rate_limit.py: a TAT built by adding intervals drifts by a few ulps.
  local _, exponent = math.frexp(new_tat)
  local eps = math.min(0.5 * interval, 4 * (tolerance / interval + 1) * math.ldexp(1.0, exponent - 53))
  if allow_at - now > eps then
    return 0, remaining_units(tolerance - (base - now), interval, eps), allow_at - now, allow_at - now, base - now
  end
  local slack = tolerance - (new_tat - now)
  local next_after
  if slack + eps >= 0 then next_after = interval - ((slack + eps) % interval - eps) else next_after = -slack end
  redis.call('SET', key, fmt(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
  return 1, remaining_units(slack, interval, eps), 0, next_after, new_tat - now
end

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
  return {
    st = v[1] or 'closed', oa = tonumber(v[2]) or 0, cf = tonumber(v[3]) or 0,
    ti = tonumber(v[4]) or 0, ts = tonumber(v[5]) or 0, hs = tonumber(v[6]) or 0, dirty = false,
  }
end

local function br_save(key, s, ttl)
  if s.dirty then
    redis.call('HSET', key, 'st', s.st, 'oa', fmt(s.oa), 'cf', s.cf, 'ti', s.ti, 'ts', s.ts, 'hs', fmt(s.hs))
  end
  if redis.call('EXISTS', key) == 1 then redis.call('EXPIRE', key, ttl) end
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
