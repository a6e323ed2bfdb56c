-- wrk script of the overload scenario. Each request carries its send time
-- (`X-Request-Start: t=<µs since the epoch>`, as a router in front of the app would
-- stamp it); the app echoes it back as `X-Bench-Sent`, so each answer's latency is
-- known here by its status: the served (2xx) and the shed (503) are counted apart.
-- At most max_requests responses per thread (the first argument after `--`); wrk's
-- own -d bounds the run in seconds.

local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_usec; } bench_timeval;
int gettimeofday(bench_timeval *tv, void *tz);
]]
local tv = ffi.new("bench_timeval")

local function now_us()
   ffi.C.gettimeofday(tv, nil)
   return tonumber(tv.tv_sec) * 1000000 + tonumber(tv.tv_usec)
end

local max_requests = 1000000
local count = 0
local threads = {}
served = {}  -- latencies (µs) of the 2xx answers of this thread
shed = {}    -- latencies (µs) of the 503 answers
other = 0    -- any other status

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   if args[1] then
      max_requests = tonumber(args[1])
   end
end

function request()
   return wrk.format(nil, nil, {["X-Request-Start"] = string.format("t=%.0f", now_us())})
end

function response(status, headers, body)
   local sent = headers["X-Bench-Sent"] or headers["x-bench-sent"]
   local latency = sent and (now_us() - tonumber(string.sub(sent, 3))) or -1
   if status >= 200 and status < 300 then
      served[#served + 1] = latency
   elseif status == 503 then
      shed[#shed + 1] = latency
   else
      other = other + 1
   end
   count = count + 1
   if count >= max_requests then
      wrk.thread:stop()
   end
end

local function percentile(sorted, p)
   if #sorted == 0 then
      return -1
   end
   local index = math.ceil(#sorted * p / 100)
   if index < 1 then index = 1 end
   return sorted[index]
end

function done(summary, latency, requests)
   local all_served, all_shed, all_other = {}, {}, 0
   for _, thread in ipairs(threads) do
      for _, v in ipairs(thread:get("served")) do all_served[#all_served + 1] = v end
      for _, v in ipairs(thread:get("shed")) do all_shed[#all_shed + 1] = v end
      all_other = all_other + thread:get("other")
   end
   table.sort(all_served)
   table.sort(all_shed)
   local e = summary.errors
   io.write(string.format(
      'BENCH {"requests": %d, "duration_us": %d, "served": %d, "shed": %d, "other": %d, '
         .. '"served_p50_us": %d, "served_p90_us": %d, "served_p99_us": %d, "served_max_us": %d, '
         .. '"shed_p50_us": %d, "shed_p99_us": %d, "p50_us": %d, "p99_us": %d, '
         .. '"connect": %d, "read": %d, "write": %d, "timeout": %d}\n',
      summary.requests, summary.duration, #all_served, #all_shed, all_other,
      percentile(all_served, 50), percentile(all_served, 90), percentile(all_served, 99),
      percentile(all_served, 100), percentile(all_shed, 50), percentile(all_shed, 99),
      latency:percentile(50), latency:percentile(99), e.connect, e.read, e.write, e.timeout))
end
