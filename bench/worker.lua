-- One contender or measurement in its own process, started by bench/run.lua.
-- Each prints one line of key=value pairs; a failure raises (exit 1).
--
--   worker.lua client URL N          client:call N times on one client
--   worker.lua luasocket URL N       socket.http + cjson, N times
--   worker.lua decode URL FILE REPS  cjson.decode vs core.envelope vs client:call
--   worker.lua memory URL N1 N2      RSS after N1 and after N2 calls
--   worker.lua export BASE_URL ROWS  peak RSS growth of a client:each export

local root = arg[0]:match("^(.*)/bench/[^/]+$") or "."
local ver = _VERSION:match("%d+%.%d+")
package.path = root .. "/lua/?.lua;" .. package.path
package.cpath = root .. "/build/" .. (os.getenv("LUA_VERSION") or ver) .. "/?.so;" .. package.cpath
arg[0] = root .. "/bench/worker.lua"
local L = dofile(root .. "/bench/lib.lua")

local bitrix24 = require "bitrix24"
local core = require "bitrix24.core"
local cjson = require "cjson"
local now = core.monotonic

local METHOD = "crm.lead.contact.items.get"
local PARAMS = { id = 1 }
local mode = arg[1]

local function client_for(url)
  return bitrix24.webhook(url, { rate_limit = false })
end

local function must(result, err)
  if result == nil then
    error(type(err) == "table" and tostring(err.code) .. ": " .. tostring(err.description) or tostring(err), 0)
  end
  return result
end

if mode == "client" then
  local url, n = arg[2], tonumber(arg[3])
  local client = client_for(url)
  must(client:call(METHOD, PARAMS))   -- opens the connection
  local t0 = now()
  for _ = 1, n do
    local rows, err = client:call(METHOD, PARAMS)
    if not rows then error(tostring(err), 0) end
  end
  print(string.format("calls=%d seconds=%.6f", n, now() - t0))

elseif mode == "breakdown" then
  -- Per-call cost of each layer, interleaved over 3 rounds (medians, us).
  local base, n = arg[2], tonumber(arg[3])
  local url = base .. METHOD
  local h = core.http { user_agent = "bitrix24-lua/" .. bitrix24._VERSION }
  local client = client_for(base)
  local env = must(h:call(url, L.REQUEST_BODY))
  must(client:call(METHOD, PARAMS))
  local stub = bitrix24.webhook(base, { rate_limit = false, transport = {
    call = function() return env, 200 end, request = function() return 200, "" end, close = function() end,
  } })
  local tasks = {
    raw = function() for _ = 1, n do must(h:request(url, L.REQUEST_BODY)) end end,
    call = function() for _ = 1, n do must(h:call(url, L.REQUEST_BODY)) end end,
    client = function() for _ = 1, n do must(client:call(METHOD, PARAMS)) end end,
    decode = function() for _ = 1, n do must(core.envelope(200, L.SMALL_BODY)) end end,
    lua = function() for _ = 1, n do must(stub:call(METHOD, PARAMS)) end end,
  }
  local order = { "raw", "call", "client", "decode", "lua" }
  local times = {}
  for _, k in ipairs(order) do times[k] = {} end
  for r = 1, 3 do
    for i = 0, #order - 1 do
      local k = order[(r + i - 1) % #order + 1]
      collectgarbage("collect")
      local t0 = now()
      tasks[k]()
      times[k][r] = (now() - t0) / n * 1e6
    end
  end
  local parts = {}
  for _, k in ipairs(order) do parts[#parts + 1] = string.format("%s=%.2f", k, L.median(times[k])) end
  print(table.concat(parts, " "))

elseif mode == "luasocket" then
  local http = require "socket.http"
  local ltn12 = require "ltn12"
  local url, n = arg[2], tonumber(arg[3])
  local headers = {
    ["content-type"] = "application/json", ["accept"] = "application/json",
    ["content-length"] = tostring(#L.REQUEST_BODY), ["user-agent"] = "bitrix24-lua/" .. bitrix24._VERSION,
  }
  local function one()
    local chunks = {}
    local ok, status = http.request {
      url = url, method = "POST", headers = headers,
      source = ltn12.source.string(L.REQUEST_BODY), sink = ltn12.sink.table(chunks),
    }
    if ok == nil or status ~= 200 then error("socket.http: " .. tostring(status), 0) end
    return cjson.decode(table.concat(chunks)).result
  end
  one()
  local t0 = now()
  for _ = 1, n do one() end
  print(string.format("calls=%d seconds=%.6f", n, now() - t0))

elseif mode == "decode" then
  -- Interleaved: each rep times the three in a rotating order, each after
  -- a full collection, so GC debt left by one does not land on another.
  local url, body, reps = arg[2], assert(L.read_file(arg[3])), tonumber(arg[4])
  local client = client_for(url)
  local first = must(client:call(METHOD, PARAMS))
  local want = #assert(cjson.decode(body).result)
  assert(#first == want, "client got " .. #first .. " rows, want " .. want)
  if math.type then
    assert(math.type(first[1].CONTACT_ID) == "integer", "CONTACT_ID is not an integer")
  end
  local tasks = {
    cjson = function() return cjson.decode(body) end,
    core = function() return core.envelope(200, body) end,
    client = function() return must(client:call(METHOD, PARAMS)) end,
  }
  local order = { "cjson", "core", "client" }
  local times = { cjson = {}, core = {}, client = {} }
  for r = 1, reps do
    for k = 0, 2 do
      local name = order[(r + k - 1) % 3 + 1]
      collectgarbage("collect")
      local t0 = now()
      local v = tasks[name]()
      local dt = now() - t0
      assert(v)
      times[name][#times[name] + 1] = dt
    end
  end
  print(string.format("rows=%d bytes=%d cjson=%.6f core=%.6f client=%.6f", want, #body,
    L.median(times.cjson), L.median(times.core), L.median(times.client)))

elseif mode == "memory" then
  local url, n1, n2 = arg[2], tonumber(arg[3]), tonumber(arg[4])
  local client = client_for(url)
  local function calls(n)
    for _ = 1, n do
      local rows, err = client:call(METHOD, PARAMS)
      if not rows then error(tostring(err), 0) end
    end
  end
  local function settle()
    collectgarbage("collect")
    collectgarbage("collect")
    return L.status_kib("VmRSS"), collectgarbage("count")
  end
  calls(n1)
  local rss1, lua1 = settle()
  calls(n2 - n1)
  local rss2, lua2 = settle()
  print(string.format("n1=%d n2=%d rss1=%d rss2=%d lua1=%.1f lua2=%.1f", n1, n2, rss1, rss2, lua1, lua2))

elseif mode == "export" then
  local base, want = arg[2], tonumber(arg[3])
  local client = client_for(base)
  collectgarbage("collect")
  local reset = L.reset_peak()
  local rss0 = L.status_kib("VmRSS")
  local count, lua_peak = 0, collectgarbage("count")
  for lead, err in client:each("crm.lead.list", { select = { "ID", "TITLE" } }) do
    if not lead then error(tostring(err), 0) end
    count = count + 1
    if count % 50 == 0 then
      local c = collectgarbage("count")
      if c > lua_peak then lua_peak = c end
    end
  end
  assert(count == want, "exported " .. count .. " rows, want " .. want)
  print(string.format("rows=%d rss0=%d peak=%d reset=%s lua_peak=%.1f", count, rss0,
    L.status_kib("VmHWM"), tostring(reset), lua_peak))

else
  io.stderr:write("usage: worker.lua client|luasocket|decode|memory|export ...\n")
  os.exit(2)
end
