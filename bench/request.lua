-- One request shape per run, chosen by BENCH_PATH; tallies status codes so
-- the run can prove every answer was the expected one.
local path = os.getenv("BENCH_PATH")
local token = os.getenv("BENCH_TOKEN")
local hash = os.getenv("BENCH_KEY_HASH")
local endpoint = "/api/invalidate-user-api-key-cache"

if path == "full" then
  wrk.method = "POST"
  wrk.headers["Authorization"] = "Bearer " .. token
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"keyHash":"' .. hash .. '"}'
elseif path == "401" then
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"keyHash":"' .. hash .. '"}'
elseif path == "422" then
  wrk.method = "POST"
  wrk.headers["Authorization"] = "Bearer " .. token
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"keyHash":"not-a-hash"}'
elseif path == "preflight" then
  wrk.method = "OPTIONS"
  wrk.headers["Origin"] = "https://worldmonitor.app"
  wrk.headers["Access-Control-Request-Method"] = "POST"
elseif path == "404" then
  -- Another path: answered by the host alone, the guest never runs.
  endpoint = "/not-the-endpoint"
end
wrk.path = endpoint

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      total[status] = (total[status] or 0) + n
    end
  end
  local line = "STATUSES"
  for status, n in pairs(total) do
    line = line .. " " .. status .. "=" .. n
  end
  print(line)
  print(string.format("LATENCY p50_us=%d p99_us=%d", latency:percentile(50), latency:percentile(99)))
end
