-- POST /feedback bodies read from a file, one JSON body per line, each sent once in turn
-- (after the last the thread starts again: then labels repeat; the runner checks that none
-- did). Arguments after `--`: <bodies file>. Prints a JSON summary line when the run ends.

local bodies = {}
local next_body = 1

function init(args)
  for line in io.lines(args[1]) do
    bodies[#bodies + 1] = line
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  local body = bodies[next_body]
  next_body = next_body % #bodies + 1
  return wrk.format("POST", "/feedback", nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us": %d, "requests": %d, "errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.duration, summary.requests, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
