-- hit.lua - wrk script for the cache benchmark (bench/cache/run.sh): the same
-- POST /predict {"text": ...} over and over, as the issue measures cache hits
-- ("same request repeated"). The request is built once (wrk.method, wrk.body,
-- wrk.headers) and there is no request() or response() function, so wrk
-- sends pre-built bytes and does not hand every answer to Lua: the load
-- generator takes as little as it can of this 2-core machine's CPU.
-- Errors are counted by wrk itself (summary.errors.status: non-2xx and
-- non-3xx answers); run.sh checks a body before the run.
--
-- WRK_API_KEY (environment), when set, is sent as X-API-Key.
-- Output (last line): the same JSON line as bench/http/predict.lua, with
-- non_2xx taken from wrk's status error count and bad_body 0.

wrk.method = "POST"
wrk.path = "/predict"
wrk.body = '{"text": "a subtle and well-crafted ( for the most part ) chiller ."}'
wrk.headers["Content-Type"] = "application/json"
if os.getenv("WRK_API_KEY") then wrk.headers["X-API-Key"] = os.getenv("WRK_API_KEY") end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  local function ms(us) return us / 1000.0 end
  io.write(string.format(
    '{"requests": %d, "duration_s": %.3f, "requests_per_s": %.2f, ' ..
    '"latency_ms": {"mean": %.3f, "p50": %.3f, "p90": %.3f, "p99": %.3f, "max": %.3f}, ' ..
    '"non_2xx": %d, "bad_body": 0, "status_errors": %d, ' ..
    '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}}\n',
    summary.requests, secs, summary.requests / secs,
    ms(latency.mean), ms(latency:percentile(50)), ms(latency:percentile(90)),
    ms(latency:percentile(99)), ms(latency.max),
    e.status, e.status, e.connect, e.read, e.write, e.timeout))
end
