-- The cost of the shared rate budget per call: one reservation in Redis on
-- loopback (one EVALSHA round trip) beside the in-process bucket and the
-- file budget. Starts its own redis-server on a free loopback port (nothing
-- saved) and stops it. Reservations only: no HTTP, the bucket never waits.
--
--   lua5.4 bench/redis.lua [calls=20000]
-- Run from the repository root after `make`; needs redis-server and
-- Debian's lua-redis (under Lua 5.4 its folder /usr/share/lua/5.3 is added
-- to the path here, see README "Many machines").

local root = arg[0]:match("^(.*)/bench/[^/]+$") or "."
local ver = _VERSION:match("%d+%.%d+")
package.path = root .. "/lua/?.lua;" .. package.path .. ";/usr/share/lua/5.3/?.lua;/usr/share/lua/5.1/?.lua"
package.cpath = root .. "/build/" .. (os.getenv("LUA_VERSION") or ver) .. "/?.so;" .. package.cpath

local bitrix24 = require "bitrix24"
local limiter = require "bitrix24.limiter"
local runtime = require "bitrix24.runtime"
local core = require "bitrix24.core"
local socket = require "socket"

local calls = tonumber(arg[1] and (arg[1]:gsub("^calls=", ""))) or 20000

local function capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("*a")
  p:close()
  return (out:gsub("%s+$", ""))
end

local s = assert(socket.bind("127.0.0.1", 0))
local _, port = s:getsockname()
s:close()
local dir = capture("mktemp -d")
local pid = capture(("timeout 300 redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no --dir %s "
  .. ">%s/log 2>&1 </dev/null & echo $!"):format(port, dir, dir))
local deadline = socket.gettime() + 5
while not socket.connect("127.0.0.1", port) do
  assert(socket.gettime() < deadline, "redis-server did not start")
  socket.sleep(0.02)
end

-- Microseconds per reservation with `budget`.
local function per_call(budget)
  local lim = limiter.new("https://bench.example", { rate = 1e9, burst = 1e12, budget = budget }, runtime)
  assert(lim:reserve(core.now() + 60, "crm.lead.get"))   -- connects, loads the script
  local t0 = core.monotonic()
  for _ = 1, calls do
    local r = lim:reserve(core.now() + 60, "crm.lead.get")
    assert(r and r.taken)
  end
  return (core.monotonic() - t0) / calls * 1e6
end

local rows = {
  { "in-process bucket (memory)", per_call(limiter.memory_budget()) },
  { "file budget (one machine)", per_call(bitrix24.file_budget(dir .. "/budget.json")) },
  { "Redis budget on loopback", per_call(bitrix24.redis_budget(("redis://127.0.0.1:%d/0"):format(port))) },
}
os.execute("kill " .. pid .. " 2>/dev/null; rm -rf " .. dir)

print(("Budget cost per call, %d reservations, %s"):format(calls, _VERSION))
print("| budget | us per call |")
print("|---|---|")
for _, r in ipairs(rows) do print(("| %s | %.1f |"):format(r[1], r[2])) end
