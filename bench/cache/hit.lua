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

local write_result = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./")
                            .. "../http/result_line.lua")

wrk.method = "POST"
wrk.path = "/predict"
wrk.body = '{"text": "a subtle and well-crafted ( for the most part ) chiller ."}'
wrk.headers["Content-Type"] = "application/json"
if os.getenv("WRK_API_KEY") then wrk.headers["X-API-Key"] = os.getenv("WRK_API_KEY") end

function done(summary, latency, requests)
  write_result(summary, latency, summary.errors.status, 0)
end
