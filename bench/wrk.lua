-- wrk script of the loginguard benchmark (bench/run.py drives it).
--
-- Why a script at all: wrk alone can only GET, and its human summary is awkward
-- to parse.  This sets the method/body from the environment (so the POST /login
-- workload is a real urlencoded form) and prints one machine-readable line at
-- the end.  It deliberately defines no request()/response() callbacks: those
-- make wrk call into Lua per request and would cost load-generator CPU.
--
--   BENCH_METHOD=POST BENCH_BODY='user=alice&password=right' \
--     wrk -t1 -c32 -d10s -s bench/wrk.lua http://127.0.0.1:8081/login

local method = os.getenv("BENCH_METHOD") or "GET"
local body = os.getenv("BENCH_BODY") or ""

wrk.method = method
if body ~= "" or method == "POST" then
  wrk.body = body
  wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/x-www-form-urlencoded"
end
wrk.headers["User-Agent"] = "loginguard-bench"

-- BENCH_VARY=1: every login comes from another client and account, as behind a real load
-- balancer (X-Forwarded-For from a trusted hop).  One IP posting thousands of logins a
-- second would rightly be banned by the guard, and the run would measure its block page.
if os.getenv("BENCH_VARY") then
  math.randomseed(os.time())
  function request()
    local ip = string.format("10.%d.%d.%d", math.random(1, 250), math.random(0, 255), math.random(1, 254))
    local b = string.format("user=user%d&password=right", math.random(1, 1000000))
    wrk.headers["X-Forwarded-For"] = ip
    return wrk.format(method, nil, wrk.headers, b)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%.0f,"p90":%.0f,"p99":%.0f,"p99_9":%.0f,"max":%.0f,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
