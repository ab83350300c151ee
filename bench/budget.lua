-- Budget efficiency: the contacts of N leads against a fake portal that
-- enforces a leaky bucket, by one process or several sharing a file budget.
-- Prints the HTTP requests sent, the 503s the portal answered, and the wall
-- time against the least the bucket allows:
--   requests beyond the first `burst` can go out only at `rate` per second,
--   so the minimum is (requests - burst) / rate seconds.
--
--   lua5.4 bench/budget.lua [leads=2000] [rate=2] [burst=10] [processes=1]
-- Run from the repository root after `make`.

local root = arg[0]:match("^(.*)/bench/[^/]+$") or "."
local ver = _VERSION:match("%d+%.%d+")
package.path = root .. "/lua/?.lua;" .. package.path
package.cpath = root .. "/build/" .. (os.getenv("LUA_VERSION") or ver) .. "/?.so;" .. package.cpath

local bitrix24 = require "bitrix24"
local core = require "bitrix24.core"

local function arg_number(i, default)
  local v = arg[i] and tonumber((arg[i]:gsub("^[%a_]+=", "")))
  return v or default
end

-- A worker: fetches the contacts of leads from..to and prints OK or FAIL.
if arg[1] == "--worker" then
  local url, budget, from, to, rate, burst = arg[2], arg[3], tonumber(arg[4]), tonumber(arg[5]),
    tonumber(arg[6]), tonumber(arg[7])
  local client = bitrix24.webhook(url, { rate = rate, burst = burst,
    budget = budget ~= "-" and bitrix24.file_budget(budget) or nil })
  local ids = {}
  for i = from, to do ids[#ids + 1] = i end
  local rows, err = client:lead_contacts(ids)
  print(rows and "OK" or ("FAIL " .. tostring(err)))
  return
end

local leads, rate, burst, processes = arg_number(1, 2000), arg_number(2, 2), arg_number(3, 10), arg_number(4, 1)

local fake = require "bitrix24.fake.server"
local portal = fake.start { tls = false, rate = rate, burst = burst, timeout = 1800 }
local dir = io.popen("mktemp -d"):read("*l")
local budget = processes > 1 and dir .. "/budget.json" or "-"
local lua = os.getenv("LUA") or ("lua" .. ver)

local per = math.ceil(leads / processes)
local cmds = {}
for p = 1, processes do
  local from, to = (p - 1) * per + 1, math.min(p * per, leads)
  cmds[#cmds + 1] = string.format("%s %s/bench/budget.lua --worker %s %s %d %d %s %s", lua, root,
    portal.webhook_url, budget, from, to, rate, burst)
end
local started = core.monotonic()
local out = io.popen("(" .. table.concat(cmds, " & ") .. " & wait)"):read("*a")
local wall = core.monotonic() - started

local requests, rejected = 0, 0
for _, r in ipairs(portal:requests()) do
  requests = requests + 1
  if r.status == 503 then rejected = rejected + 1 end
end
portal:stop()
os.execute("rm -rf '" .. dir .. "'")

local _, failures = out:gsub("FAIL", "")
local minimum = math.max(0, (requests - burst) / rate)
print(string.format("leads=%d rate=%g burst=%d processes=%d", leads, rate, burst, processes))
print(string.format("requests=%d (ideal %d) rejected_503=%d failed_jobs=%d", requests,
  math.ceil(leads / 50), rejected, failures))
print(string.format("wall=%.2fs minimum=%.2fs ratio=%.3f", wall, minimum, minimum > 0 and wall / minimum or 0))
os.exit(failures == 0 and rejected == 0 and 0 or 1)
