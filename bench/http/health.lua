-- health.lua - wrk script for bench/http/run.sh: GET /health at a low, steady
-- rate (each connection waits WRK_DELAY_MS, default 20, between requests), run
-- beside a saturating /predict load to see whether health checks stay fast.
-- wrk starts a request's clock when it writes the request, so the delay is not
-- in the latencies. Prints the same JSON line as predict.lua.
--
--   wrk -t1 -c2 -d8s --latency --timeout 30s -s bench/http/health.lua http://127.0.0.1:8000
--
-- WRK_PATH (environment) changes the path, e.g. /health/live.

local write_result = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./")
                            .. "result_line.lua")

wrk.method = "GET"
wrk.path = os.getenv("WRK_PATH") or "/health"
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "20")
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non_2xx = 0
end

function delay()
  return delay_ms
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non_2xx = non_2xx + 1
  end
end

function done(summary, latency, requests)
  local non2xx = 0
  for _, t in ipairs(threads) do
    non2xx = non2xx + t:get("non_2xx")
  end
  write_result(summary, latency, non2xx, 0)
end
