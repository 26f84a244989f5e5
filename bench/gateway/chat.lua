-- chat.lua - wrk script of the gateway benchmark (bench/gateway/run.sh): the
-- same POST /v1/chat/completions over and over, to the fake upstream directly
-- or through aiserve's gateway (the same body either way; the fake and the
-- gateway both know the model "bench").
--
-- Environment:
--   WRK_STREAM=1   ask for a stream ("stream": true, usage included); wrk's
--                  latency is then the whole stream, to its last byte
--   WRK_RATE=R     pace the requests at R per second (one wrk thread: run
--                  wrk with -t1): see delay() below
--   WRK_BEARER=K   send "Authorization: Bearer K" (the fake's key, for the
--                  direct calls; through aiserve the gateway sends it)
--
-- The request is built once and there is no request() or response()
-- function, so wrk sends pre-built bytes and hands no answer to Lua: the load
-- generator takes as little as it can of the machine. Errors are counted by
-- wrk (summary.errors.status: answers that are not 2xx or 3xx); run.sh
-- checks a body of each kind before it measures.
-- Output (last line): bench/http/result_line.lua's JSON line.

local write_result = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./")
                            .. "../http/result_line.lua")

local stream = os.getenv("WRK_STREAM") == "1"
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
if (os.getenv("WRK_BEARER") or "") ~= "" then wrk.headers["Authorization"] = "Bearer " .. os.getenv("WRK_BEARER") end
wrk.body = '{"model": "bench", ' ..
           (stream and '"stream": true, "stream_options": {"include_usage": true}, ' or '') ..
           '"messages": [{"role": "system", "content": "You are a helpful assistant."}, ' ..
           '{"role": "user", "content": "Say hello in French, in one short sentence."}]}'

-- Fixed rate. wrk (not wrk2) is a closed loop: each connection sends its
-- next request when the answer to the last one has come. With delay()
-- defined, wrk asks it, before every request on every connection (the first
-- ones included), how many milliseconds to wait. Each call takes the next
-- free slot of a schedule of one request every 1000/R ms, so requests leave
-- at R per second as long as some connection is free (run.sh opens enough
-- for several times R x latency). If none is free the schedule slips rather
-- than bursting to catch up, and wrk's latency counts from the moment a
-- request is sent (no correction for the requests that left late): run.sh
-- reports the rate reached, which says whether that happened.
local rate = tonumber(os.getenv("WRK_RATE") or "")
if rate and rate > 0 then
  local ffi = require("ffi")
  ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } gwbench_timespec;
    int clock_gettime(int clk_id, gwbench_timespec *tp);
  ]]
  local ts = ffi.new("gwbench_timespec")
  local function now_ms()
    ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end
  local interval = 1000 / rate
  local due = nil
  function delay()
    local now = now_ms()
    if due == nil or due < now then due = now end
    local wait = due - now
    due = due + interval
    -- wrk's timers have millisecond resolution (it truncates to whole ms).
    return math.floor(wait + 0.5)
  end
end

function done(summary, latency, requests)
  write_result(summary, latency, summary.errors.status, 0)
end
