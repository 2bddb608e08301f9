-- POST one fixed body; print a JSON summary line when the run ends.
-- Arguments after `--`: <body file> <content type> [<Inference-Header-Content-Length>]
-- The body is read once per thread in init(); wrk formats the request once, so no Lua
-- runs per request.

function init(args)
  local path = args[1]
  local f = assert(io.open(path, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = args[2] or "application/json"
  if args[3] ~= nil and args[3] ~= "" then
    wrk.headers["Inference-Header-Content-Length"] = args[3]
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local non2xx_or_socket = e.connect + e.read + e.write + e.status + e.timeout
  io.write(string.format(
    'BENCH_JSON {"duration_us": %d, "requests": %d, "bytes": %d, "errors": %d, '
      .. '"errors_connect": %d, "errors_read": %d, "errors_write": %d, '
      .. '"errors_status": %d, "errors_timeout": %d, '
      .. '"latency_min_us": %d, "latency_mean_us": %.2f, "latency_max_us": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d}\n',
    summary.duration, summary.requests, summary.bytes, non2xx_or_socket,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
