-- predict.lua - wrk script for aiserve's HTTP benchmark (bench/http/run.sh):
-- POST /predict {"text": "<sentence>"} with Content-Type: application/json,
-- cycling through 64 real sentences (each wrk thread starts at a different
-- one), and a done() that prints one JSON line with the results.
--
--   wrk -t1 -c64 -d10s --latency --timeout 30s -s bench/http/predict.lua http://127.0.0.1:8000
--
-- The sentences: the first 64 of GLUE SST-2 dev.tsv (/work/shared/data/sst2/,
-- lower-cased and PTB-tokenised as there) with 11 to 13 whitespace-separated
-- words; 12.03 words on average, 34 positive, 30 negative.
--
-- Output (last line of stdout): {"requests", "duration_s", "requests_per_s",
-- "latency_ms": {"mean", "p50", "p90", "p99", "max"}, "non_2xx", "bad_body",
-- "socket_errors": {"connect", "read", "write", "timeout"}}. wrk keeps
-- latencies in microseconds; they are converted to milliseconds here. A
-- request that times out (--timeout) is counted in socket_errors.timeout and
-- is not in the latency figures, so run.sh sets a long timeout. "bad_body"
-- counts 2xx responses without a "label" in the body.
--
-- WRK_PATH (environment) changes the path, e.g. /v1/models/sentiment/predict.
-- WRK_API_KEY (environment), when set, is sent as X-API-Key.

local write_result = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./")
                            .. "result_line.lua")

local sentences = {
  "the iditarod lasts for days - this just felt like it did .",
  "i had to look away - this was god awful .",
  "a sequence of ridiculous shoot - 'em - up scenes .",
  "holm ... embodies the character with an effortlessly regal charisma .",
  "a subtle and well-crafted ( for the most part ) chiller .",
  "has a lot of the virtues of eastwood at his best .",
  "the cold turkey would 've been a far better title .",
  "a string of rehashed sight gags based in insipid vulgarity .",
  "the movie fails to live up to the sum of its parts .",
  "you wo n't like roger , but you will quickly recognize him .",
  "scores no points for originality , wit , or intelligence .",
  "suffers from the lack of a compelling or comprehensible narrative .",
  "looks and feels like a project better suited for the small screen .",
  "a solid film ... but more conscientious than it is truly stirring .",
  "overall very good for what it 's trying to do .",
  "like leon , it 's frustrating and still oddly likable .",
  "a woman 's pic directed with resonance by ilya chaiken .",
  "manages to be sweet and wickedly satisfying at the same time .",
  "leigh 's film is full of memorable performances from top to bottom .",
  "the lower your expectations , the more you 'll enjoy it .",
  "and the lesson , in the end , is nothing new .",
  "all that 's missing is the spontaneity , originality and delight .",
  "of course , by more objective measurements it 's still quite bad .",
  "a by-the-numbers effort that wo n't do much to enhance the franchise .",
  "an occasionally funny , but overall limp , fish-out-of-water story .",
  "it all feels like a monty python sketch gone horribly wrong .",
  "huston nails both the glad-handing and the choking sense of hollow despair .",
  "chilling , well-acted , and finely directed : david jacobson 's dahmer .",
  "minority report is exactly what the title indicates , a report .",
  "an entertaining , colorful , action-filled crime story with an intimate heart .",
  "travels a fascinating arc from hope and euphoria to reality and disillusionment .",
  "serving sara does n't serve up a whole lot of laughs .",
  "fun , flip and terribly hip bit of cinematic entertainment .",
  "the best film about baseball to hit theaters since field of dreams .",
  "a beguiling splash of pastel colors and prankish comedy from disney .",
  "it proves quite compelling as an intense , brooding character study .",
  "and that leaves a hole in the center of the salton sea .",
  "the chateau cleverly probes the cross-cultural differences between gauls and yanks .",
  "there has always been something likable about the marquis de sade .",
  "the humor is forced and heavy-handed , and occasionally simply unpleasant .",
  "we have n't seen such hilarity since say it is n't so !",
  "a warm but realistic meditation on friendship , family and affection .",
  "it 's a remarkably solid and subtly satirical tour de force .",
  "when leguizamo finally plugged an irritating character late in the movie .",
  "an overemphatic , would-be wacky , ultimately tedious sex farce .",
  "even in its most tedious scenes , russian ark is mesmerizing .",
  "reggio 's continual visual barrage is absorbing as well as thought-provoking .",
  "the problem with this film is that it lacks focus .",
  "it 's a stunning lyrical work of considerable force and truth .",
  "a sequel that 's much too big for its britches .",
  "crackerjack entertainment -- nonstop romance , music , suspense and action .",
  "plays like a volatile and overlong w magazine fashion spread .",
  "michael gerbosi 's script is economically packed with telling scenes .",
  "a romantic comedy enriched by a sharp eye for manners and mores .",
  "rare birds has more than enough charm to make it memorable .",
  "scorsese does n't give us a character worth giving a damn about .",
  "the film 's tone and pacing are off almost from the get-go .",
  "instead , he shows them the respect they are due .",
  "puts a human face on a land most westerners are unfamiliar with .",
  "like you could n't smell this turkey rotting from miles away .",
  "it is amusing , and that 's all it needs to be .",
  "excessive , profane , packed with cartoonish violence and comic-strip characters .",
  "burns never really harnesses to full effect the energetic cast .",
  "still , as a visual treat , the film is almost unsurpassed .",
}

local path = os.getenv("WRK_PATH") or "/predict"
local headers = { ["Content-Type"] = "application/json" }
if os.getenv("WRK_API_KEY") then headers["X-API-Key"] = os.getenv("WRK_API_KEY") end
local threads = {}
local thread_index = 0

function setup(thread)
  thread_index = thread_index + 1
  thread:set("id", thread_index)
  table.insert(threads, thread)
end

function init(args)
  -- Runs in each thread's own Lua state; "id" was set by setup().
  n = (id or 1) * 17
  non_2xx = 0
  bad_body = 0
end

function request()
  n = n + 1
  local text = sentences[(n % #sentences) + 1]
  return wrk.format("POST", path, headers, '{"text": "' .. text .. '"}')
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non_2xx = non_2xx + 1
  elseif not string.find(body, '"label"', 1, true) then
    bad_body = bad_body + 1
  end
end

function done(summary, latency, requests)
  local non2xx, bad = 0, 0
  for _, t in ipairs(threads) do
    non2xx = non2xx + t:get("non_2xx")
    bad = bad + t:get("bad_body")
  end
  write_result(summary, latency, non2xx, bad)
end
