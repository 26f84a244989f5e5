-- post.lua - wrk script of the load-testing kit (bench/load/run.sh): POSTs a
-- JSON body to one endpoint of a running deployment and prints one JSON line
-- with the results (bench/http/result_line.lua) when wrk is done.
--
-- Environment (set by run.sh):
--   LOAD_PATH       the path to POST to: /predict (default), /v1/embeddings,
--                   /v1/chat/completions or any other path
--   LOAD_BODY_FILE  a file whose content is sent as the body of every
--                   request; unset: a default body for LOAD_PATH whose text
--                   changes from one request to the next (see texts below)
--   LOAD_MODEL      "model" of the default body of /v1/embeddings and
--                   /v1/chat/completions (embeddings: left out when unset,
--                   so the server's default model answers)
--   LOAD_API_KEY    sent as X-API-Key when set
--   LOAD_NO_CACHE   "1": send Cache-Control: no-cache, so no response cache
--                   answers and every request reaches a model
--
-- A 2xx answer without what the endpoint answers ("label" for a path ending
-- in /predict, "embedding" for /v1/embeddings, "choices" for
-- /v1/chat/completions; nothing is checked on other paths) counts as
-- bad_body. The first error (status and the start of its body) is written to
-- stderr, so that run.sh can say why a deployment refused the requests.

local write_result = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./")
                            .. "../http/result_line.lua")

-- Review-like sentences of 4 to 40 words, cycled so that inputs of different
-- lengths are mixed. No quotes or backslashes: they go into JSON as they are.
local texts = {
  "a gripping , beautifully made film",
  "dull .",
  "the plot wanders , but the two leads carry every scene with warmth and wit .",
  "i wanted to like it more than i did",
  "an ambitious mess that never decides what it wants to be , a thriller or a comedy , " ..
    "and ends up as neither , despite a strong cast and a fine score .",
  "funny , sharp and surprisingly moving",
  "two hours i will not get back",
  "the director keeps the pace brisk and the jokes land more often than they miss , " ..
    "which is more than most summer comedies manage .",
  "a quiet , patient portrait of a family coming apart",
  "overlong and oddly flat",
  "every frame looks expensive and none of it feels alive",
  "a small gem : honest , tender and never sentimental .",
  "the sequel repeats the first film beat for beat , only louder , longer and with less heart , " ..
    "and the final act drags on well past the point where anyone still cares .",
  "smart writing , great music",
  "it is not as clever as it thinks it is",
  "a delight from start to finish .",
}

local path = os.getenv("LOAD_PATH") or "/predict"
local model = os.getenv("LOAD_MODEL")
local fixed_body = nil
local body_file = os.getenv("LOAD_BODY_FILE")
if body_file and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  fixed_body = f:read("*a")
  f:close()
end

local headers = { ["Content-Type"] = "application/json" }
if (os.getenv("LOAD_API_KEY") or "") ~= "" then headers["X-API-Key"] = os.getenv("LOAD_API_KEY") end
if os.getenv("LOAD_NO_CACHE") == "1" then headers["Cache-Control"] = "no-cache" end

local expected = nil
if path:match("/predict$") then expected = '"label"'
elseif path == "/v1/embeddings" then expected = '"embedding"'
elseif path == "/v1/chat/completions" then expected = '"choices"' end

local function default_body(text)
  if path == "/v1/embeddings" then
    if model and model ~= "" then
      return '{"model": "' .. model .. '", "input": "' .. text .. '"}'
    end
    return '{"input": "' .. text .. '"}'
  elseif path == "/v1/chat/completions" then
    return '{"model": "' .. (model or "") .. '", "messages": [{"role": "user", "content": "' ..
           text .. '"}], "max_tokens": 64}'
  end
  return '{"text": "' .. text .. '"}'
end

local threads = {}
local thread_index = 0

function setup(thread)
  thread_index = thread_index + 1
  thread:set("id", thread_index)
  table.insert(threads, thread)
end

function init(args)
  -- Runs in each thread's own Lua state; "id" was set by setup().
  n = (id or 1) * 5
  non_2xx = 0
  bad_body = 0
  first_error = ""
end

function request()
  if fixed_body then return wrk.format("POST", path, headers, fixed_body) end
  n = n + 1
  return wrk.format("POST", path, headers, default_body(texts[(n % #texts) + 1]))
end

function response(status, hdrs, body)
  if status < 200 or status > 299 then
    non_2xx = non_2xx + 1
    if first_error == "" then
      first_error = status .. " " .. string.sub(body or "", 1, 300)
    end
  elseif expected and not string.find(body, expected, 1, true) then
    bad_body = bad_body + 1
    if first_error == "" then
      first_error = status .. " without " .. expected .. ": " .. string.sub(body or "", 1, 300)
    end
  end
end

function done(summary, latency, requests)
  local non2xx, bad, err = 0, 0, ""
  for _, t in ipairs(threads) do
    non2xx = non2xx + t:get("non_2xx")
    bad = bad + t:get("bad_body")
    if err == "" then err = t:get("first_error") or "" end
  end
  if err ~= "" then io.stderr:write("first error: " .. err:gsub("\n", " ") .. "\n") end
  write_result(summary, latency, non2xx, bad)
end
