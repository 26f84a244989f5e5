-- result_line.lua - the one JSON line every wrk script of the benchmarks
-- prints in done() (bench/http/predict.lua, health.lua, bench/cache/hit.lua):
--
--   {"requests", "duration_s", "requests_per_s", "latency_ms": {"mean", "p50",
--    "p90", "p99", "max"}, "non_2xx", "bad_body", "status_errors",
--    "socket_errors": {"connect", "read", "write", "timeout"}}
--
-- wrk keeps latencies in microseconds; they are written in milliseconds.
-- A script loads it next to itself:
--   local write_result = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./")
--                               .. "../http/result_line.lua")
return function(summary, latency, non_2xx, bad_body)
  local secs = summary.duration / 1e6
  local e = summary.errors
  local function ms(us) return us / 1000.0 end
  io.write(string.format(
    '{"requests": %d, "duration_s": %.3f, "requests_per_s": %.2f, ' ..
    '"latency_ms": {"mean": %.3f, "p50": %.3f, "p90": %.3f, "p99": %.3f, "max": %.3f}, ' ..
    '"non_2xx": %d, "bad_body": %d, "status_errors": %d, ' ..
    '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}}\n',
    summary.requests, secs, summary.requests / secs,
    ms(latency.mean), ms(latency:percentile(50)), ms(latency:percentile(90)),
    ms(latency:percentile(99)), ms(latency.max),
    non_2xx, bad_body, e.status, e.connect, e.read, e.write, e.timeout))
end
