-- loadtest.lua - wrk script for scripts/loadtest.sh: POSTs OpenAI completion
-- (or chat) requests with varied prompts and counts responses by class.
--
-- Settings come from the environment (scripts/loadtest.sh sets them):
--   LOADTEST_MAX_TOKENS  max_tokens per request (default 16)
--   LOADTEST_CHAT        1: POST /v1/chat/completions instead of /v1/completions
--   LOADTEST_STREAM      1: stream=true (SSE)
--   LOADTEST_API_KEY     sent as "Authorization: Bearer ..." when set
--   LOADTEST_MODEL       "model" field (default: omitted, the server's model)
-- done() prints one summary line that loadtest.sh parses:
--   LOADTEST requests=N ok=N rejected=N other=N connect=N read=N write=N timeout=N
-- where ok = 2xx, rejected = 429/503 (deliberate load shedding), other = any other status.

local max_tokens = tonumber(os.getenv("LOADTEST_MAX_TOKENS") or "16")
local chat = os.getenv("LOADTEST_CHAT") == "1"
local stream = os.getenv("LOADTEST_STREAM") == "1"
local api_key = os.getenv("LOADTEST_API_KEY")
local model = os.getenv("LOADTEST_MODEL")

local words = {"the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while",
               "seven", "curious", "engineers", "measure", "latency", "under", "load"}

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  ok, rejected, other = 0, 0, 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if api_key and api_key ~= "" then wrk.headers["Authorization"] = "Bearer " .. api_key end
end

local function esc(s) return (s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end)) end

function request()
  counter = counter + 1
  -- vary prompt length and content (some shared prefixes exercise the prefix cache)
  local n = 3 + (counter * 7 + id * 13) % 24
  local parts = {"Request " .. (counter % 5) .. ":"}
  for i = 1, n do parts[#parts + 1] = words[(counter + i * 3) % #words + 1] end
  local text = esc(table.concat(parts, " "))
  local fields = {}
  if model and model ~= "" then fields[#fields + 1] = '"model":"' .. esc(model) .. '"' end
  fields[#fields + 1] = '"max_tokens":' .. max_tokens
  fields[#fields + 1] = '"temperature":0.8'
  if stream then fields[#fields + 1] = '"stream":true' end
  local path
  if chat then
    path = "/v1/chat/completions"
    fields[#fields + 1] = '"messages":[{"role":"user","content":"' .. text .. '"}]'
  else
    path = "/v1/completions"
    fields[#fields + 1] = '"prompt":"' .. text .. '"'
  end
  return wrk.format(nil, path, nil, "{" .. table.concat(fields, ",") .. "}")
end

function response(status, headers, body)
  if status >= 200 and status < 300 then ok = ok + 1
  elseif status == 429 or status == 503 then rejected = rejected + 1
  else
    other = other + 1
    if other <= 3 then io.stderr:write("unexpected status " .. status .. ": " .. (body or ""):sub(1, 200) .. "\n") end
  end
end

function done(summary, latency, requests)
  local o, r, x = 0, 0, 0
  for _, t in ipairs(threads) do
    o = o + (t:get("ok") or 0)
    r = r + (t:get("rejected") or 0)
    x = x + (t:get("other") or 0)
  end
  local e = summary.errors
  io.write(string.format("LOADTEST requests=%d ok=%d rejected=%d other=%d connect=%d read=%d write=%d timeout=%d\n",
                         summary.requests, o, r, x, e.connect, e.read, e.write, e.timeout))
  io.write(string.format("latency p50=%.1fms p90=%.1fms p99=%.1fms max=%.1fms; %.1f requests/s\n",
                         latency:percentile(50) / 1000, latency:percentile(90) / 1000,
                         latency:percentile(99) / 1000, latency.max / 1000,
                         summary.requests / (summary.duration / 1e6)))
end
