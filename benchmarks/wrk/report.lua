-- wrk script of the server scenarios: the same static GET on every connection, at most
-- max_requests responses per thread (the first argument after `--`), and one JSON line
-- with the figures at the end. wrk's own -d bounds the run in seconds.

local max_requests = 1000000
local count = 0
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   if args[1] then
      max_requests = tonumber(args[1])
   end
end

function response(status, headers, body)
   count = count + 1
   if count >= max_requests then
      wrk.thread:stop()
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, '
         .. '"non2xx": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, e.status, e.connect, e.read, e.write, e.timeout))
end
