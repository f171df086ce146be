-- wafer's benchmark driven by wrk (`bench/run.sh --driver wrk`; see BENCHMARKS.md).
--
-- The harness (examples/bench) writes the scenario's requests to a file, raw HTTP/1.1 bytes, each
-- record "LENGTH\n" then LENGTH bytes, and runs
--   WAFER_BENCH_REQUESTS=FILE WAFER_BENCH_WANT=status|envelope|mixed \
--     wrk -tT -cN -dSs --timeout 10s -s wrk.lua http://ADDR -- T
-- Thread t of T sends records t, t+T, t+2T, ... (wrapping), so a run names the same sessions in
-- the same order as the harness's own load generator would. `done` prints one line the harness
-- reads: requests, errors, seconds, and latency quantiles in microseconds.
-- With WAFER_BENCH_ADDRS=HOST:PORT,HOST:PORT,... naming more than one server (several instances
-- on one database), the harness runs one thread per server and thread t talks to server t.

local want = os.getenv("WAFER_BENCH_WANT") or "status"
local file = os.getenv("WAFER_BENCH_REQUESTS")

local threads = {}
local count = 0

local addrs = {}
for a in (os.getenv("WAFER_BENCH_ADDRS") or ""):gmatch("[^,]+") do
   addrs[#addrs + 1] = a
end

function setup(thread)
   thread:set("tid", count)
   if #addrs > 1 then
      local host, port = addrs[count % #addrs + 1]:match("^(.*):(%d+)$")
      thread.addr = wrk.lookup(host, port)[1]
   end
   count = count + 1
   table.insert(threads, thread)
end

local reqs = {}
local at, step = 1, 1
bad = 0

function init(args)
   local f = assert(io.open(file, "rb"))
   local data = f:read("*a")
   f:close()
   local pos = 1
   while pos <= #data do
      local nl = data:find("\n", pos, true)
      local len = tonumber(data:sub(pos, nl - 1))
      reqs[#reqs + 1] = data:sub(nl + 1, nl + len)
      pos = nl + 1 + len
   end
   step = tonumber(args[1]) or 1
   at = (tid or 0) % #reqs + 1
end

function request()
   local r = reqs[at]
   at = at + step
   if at > #reqs then
      at = (at - 1) % #reqs + 1
   end
   return r
end

-- A body is looked at only where the scenario's success is in it (wrk itself counts any status
-- other than 2xx/3xx): defining `response` makes wrk hand every body to Lua. `errcode`: WeChat's
-- answer through the gateway or directly, a success only with `"errcode":0,` in it.
if want == "errcode" then
   function response(status, headers, body)
      if status ~= 200 or not body:find('"errcode":0,', 1, true) then
         bad = bad + 1
      end
   end
elseif want ~= "status" then
   function response(status, headers, body)
      if status == 200 and body:sub(1, 14) == '{"returnCode":' then
         if body:sub(1, 16) ~= '{"returnCode":0,' then
            bad = bad + 1
         end
      elseif status == 200 and want == "envelope" then
         bad = bad + 1
      end
   end
end

function done(summary, latency, requests)
   local bads = 0
   for _, t in ipairs(threads) do
      bads = bads + (t:get("bad") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      "WAFER-BENCH requests=%d errors=%d secs=%.6f p50=%d p99=%d p999=%d max=%d\n",
      summary.requests,
      e.connect + e.read + e.write + e.status + e.timeout + bads,
      summary.duration / 1e6,
      latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
