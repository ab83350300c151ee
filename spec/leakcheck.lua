-- spec/leakcheck.lua: 10,000 calls through every public path and every
-- failure kind, for make test-valgrind (spec/run-robust), against a fake
-- portal on 127.0.0.1. Each group prints "ok N - ..." when every call of
-- it ended as expected, "not ok N - ..." otherwise; valgrind judges the
-- memory. Runs under plain Lua as well:
--   LUA_VERSION=5.4 lua5.4 spec/leakcheck.lua [scale]
-- (scale: a fraction of the 10,000, e.g. 0.1, for a quick run).
local version = os.getenv("LUA_VERSION") or _VERSION:match("%d+%.%d+")
package.path = "lua/?.lua;spec/?.lua;" .. package.path
package.cpath = "build/" .. version .. "/?.so;" .. package.cpath

local support = require "support"
local bitrix24 = require "bitrix24"
local core = require "bitrix24.core"

local SCALE = tonumber(arg and arg[1]) or 1
local ITEMS_GET = "crm.lead.contact.items.get"

local portal = support.start_portal { tls = false, rate = 1000, burst = 1000000, timeout = 600 }
local client = bitrix24.webhook(portal.webhook_url, support.opts { timeout = 30 })
local total, group_n, failures = 0, 0, 0

-- Runs f(i) n times; f returns true when the call ended as expected, or
-- false and a message.
local function group(name, n, f)
  n = math.max(1, math.floor(n * SCALE + 0.5))
  local bad, why = 0, nil
  for i = 1, n do
    local ok, good, msg = pcall(f, i)
    if not ok then good, msg = false, good end
    if not good then
      bad = bad + 1
      why = why or tostring(msg)
    end
  end
  total = total + n
  group_n = group_n + 1
  if bad == 0 then
    print(("ok %d - %s (%d calls)"):format(group_n, name, n))
  else
    failures = failures + 1
    print(("not ok %d - %s: %d of %d calls failed; first: %s"):format(group_n, name, bad, n, why))
  end
  collectgarbage()
end

local function fails_with(code)
  return function()
    local rows, err = client:call(ITEMS_GET, { id = 1 })
    if rows ~= nil then return false, "a success" end
    if err.code ~= code then return false, tostring(err) end
    return tostring(err):find("\n") == nil, "a multi-line error"
  end
end

-- A fault for every method until cleared; then n calls expecting code.
local function with_fault(name, spec, n, code, f)
  portal:fault(spec)
  group(name, n, f or fails_with(code))
  portal:fault { clear = true }
end

group("call: success", 3000, function()
  local rows = client:call(ITEMS_GET, { id = 1 })
  return rows and rows[1].CONTACT_ID == 1010
end)
group("call: portal error (ACCESS_DENIED)", 300, function()
  local _, err = client:call(ITEMS_GET, { id = 13 })
  return err and err.code == "ACCESS_DENIED"
end)
group("typed form and each", 200, function()
  local rows = client.crm.lead.contact.items.get { id = 2 }
  local n = 0
  for row, err in client:each("crm.lead.list", { select = { "ID" } }) do
    if err then return false, tostring(err) end
    n = n + (row.ID and 1 or 0)
  end
  return rows and n > 0
end)
group("batch: success with a reference", 700, function()
  local r = client:batch { a = { ITEMS_GET, { id = 1 } },
    b = { "crm.lead.contact.fields", { x = "$result[a][0][CONTACT_ID]" } } }
  return r and r.a.result and r.b.result
end)
group("lead_contacts", 200, function()
  local rows = client:lead_contacts { 1, 2, 3, 13 }
  return rows and rows[1] and rows[13] == nil
end)

with_fault("html502", { kind = "html502" }, 500, "BAD_RESPONSE")
with_fault("truncate", { kind = "truncate" }, 300, "NETWORK_ERROR")
with_fault("malformed", { kind = "malformed" }, 500, "BAD_RESPONSE")
with_fault("reset", { kind = "reset" }, 300, "NETWORK_ERROR")
with_fault("error500", { kind = "error500" }, 500, "INTERNAL_SERVER_ERROR")
with_fault("error200", { kind = "error200" }, 500, "ERROR_CORE")
with_fault("redirect to another host", { kind = "redirect" }, 200, "PORTAL_MOVED")
with_fault("canned 503", { kind = "canned", status = 503,
  body = '{"error":"QUERY_LIMIT_EXCEEDED","error_description":"Too many requests"}' }, 300, "QUERY_LIMIT_EXCEEDED")
with_fault("canned 429", { kind = "canned", status = 429, body = "" }, 200, "BAD_RESPONSE")
with_fault("batch: error500", { kind = "error500", method = "batch" }, 200, nil, function()
  local r, err = client:batch { a = { ITEMS_GET, { id = 1 } } }
  return r == nil and err.code == "INTERNAL_SERVER_ERROR"
end)

-- max_response: an answer one byte too large for the client.
local small = bitrix24.webhook(portal.webhook_url, support.opts { max_response = 64 })
group("RESPONSE_TOO_LARGE", 300, function()
  local _, err = small:call(ITEMS_GET, { id = 1 })
  return err and err.code == "RESPONSE_TOO_LARGE"
end)
small:close()

-- Timeouts: an answer 0.3 s late for a client that waits 0.1 s.
local impatient = bitrix24.webhook(portal.webhook_url, support.opts { timeout = 0.1 })
with_fault("TIMEOUT", { kind = "latency", delay = 0.3 }, 40, nil, function()
  local _, err = impatient:call(ITEMS_GET, { id = 1 })
  return err and err.code == "TIMEOUT", err and tostring(err)
end)
impatient:close()

-- Connection refused: a port nobody listens on (the portal's, after a stop
-- would be racy; a fresh socket bound and closed gives a free one).
local socket = require "socket"
local s = assert(socket.bind("127.0.0.1", 0))
local _, port = s:getsockname()
s:close()
local refused = bitrix24.webhook("http://127.0.0.1:" .. port .. "/rest/1/abcd/", support.opts())
group("connection refused", 400, function()
  local _, err = refused:call(ITEMS_GET, { id = 1 })
  return err and err.code == "NETWORK_ERROR"
end)
refused:close()

-- Errors raised in C before anything is sent: the encoders.
local bad_params = {
  { x = 0 / 0 }, { x = 1 / 0 }, { x = "\255\254" }, { x = print }, { x = coroutine.create(print) },
  { x = io.stdout }, { [true] = 1 },
}
local cycle = {}
cycle.self = cycle
bad_params[#bad_params + 1] = { x = cycle }
group("encode errors raised in C (call)", 400, function(i)
  local ok, msg = pcall(client.call, client, "crm.lead.list", bad_params[i % #bad_params + 1])
  return not ok and tostring(msg):find("cannot encode", 1, true) ~= nil, msg
end)
-- (Bytes that are not UTF-8 are fine in a batch command: percent-encoded.)
table.remove(bad_params, 3)
group("query errors raised in C (batch)", 300, function(i)
  local ok, msg = pcall(client.batch, client, { a = { "crm.lead.list", bad_params[i % #bad_params + 1] } })
  return not ok and tostring(msg):find("cannot encode", 1, true) ~= nil, msg
end)
group("core.envelope / core.json_decode on damaged answers", 500, function(i)
  local bodies = { "", "<html>", '{"result":', '{"error":{"code":1}}', '{"result":[1,2.5,1e400]}', "[]", '{"a":"\0"}' }
  local body = bodies[i % #bodies + 1]
  core.envelope(200 + i % 400, body)
  core.json_decode(body)
  return true
end)

-- core.multi: rounds of 4 requests in flight, each round ending another
-- way: all answered (one with a broken answer), one aborted, all aborted,
-- or the multi closed with them in flight, or left to the collector.
local multi_url = portal.webhook_url .. ITEMS_GET
group("core.multi: answered, aborted, closed and collected in flight", 300, function(i)
  local m = core.multi { parallel = 4 }
  local tickets = {}
  for id = 1, 4 do tickets[id] = m:start(multi_url, id == 4 and "{" or '{"id":1}', 30, id == 3) end
  local way, answered = i % 5, 0
  if way == 1 then m:abort(tickets[2]) elseif way == 2 then m:abort() end
  while way <= 2 and m:in_flight() > 0 do
    local ticket, rows = m:wait(5)
    if not ticket then return false, "no answer within 5 s" end
    if ticket ~= tickets[4] and not (rows and rows.result[1].CONTACT_ID == 1010) then
      return false, "a wrong answer"
    end
    answered = answered + 1
  end
  if way == 3 then
    m:wait(0.01)
    m:close()
    m:close()
  elseif way ~= 4 then   -- way 4: left in flight to __gc
    m:close()
  end
  return answered == ({ [0] = 4, 3, 0 })[way] or way > 2, "answered " .. answered
end)

-- client:calls over core.multi (the scheduler's coroutines): 8 calls, 4 in
-- flight, each round ending another way: all answered (one an error), the
-- client closed from a progress callback, or a raise from it.
local fan_calls = {}
for id = 1, 8 do fan_calls[id] = { ITEMS_GET, { id = id == 5 and 13 or id } } end
group("client:calls, 4 in flight: answered, closed and raised mid-way", 300, function(i)
  local c = bitrix24.webhook(portal.webhook_url, support.opts { parallel = 4, timeout = 30 })
  local way = i % 3
  local ok, results, errs = pcall(c.calls, c, fan_calls, { progress = function(done)
    if done == 2 and way == 1 then c:close() end
    if done == 2 and way == 2 then error("stop") end
  end })
  c:close()
  if way == 2 then return not ok and tostring(results):find("stop", 1, true) ~= nil, tostring(results) end
  if not ok then return false, tostring(results) end
  if way == 1 then return errs[8] ~= nil and errs[8].code == "CANCELLED", errs[8] and tostring(errs[8]) end
  return results[1] ~= nil and errs[5] ~= nil and errs[5].code == "ACCESS_DENIED", "unexpected results"
end)

-- OAuth: a refresh that fails at the token endpoint, then one that works.
local info = portal:info()
local function oauth_client()
  return bitrix24.oauth({ endpoint = portal.oauth_endpoint, token_url = portal.token_url,
    access_token = info.access_token, refresh_token = info.refresh_token,
    client_id = info.client_id, client_secret = info.client_secret }, support.opts())
end
portal:expire_tokens()
with_fault("OAuth refresh: token endpoint fails", { kind = "html502", method = "oauth.token" }, 50, nil, function()
  local c = oauth_client()
  local rows, err = c:call(ITEMS_GET, { id = 1 })
  c:close()
  return rows == nil and err ~= nil and type(err.code) == "string", err and tostring(err)
end)
client:close()

-- Closed and collected clients: __gc and double close.
group("clients opened, closed twice, collected", (10000 * SCALE - total) / SCALE, function()
  local c = bitrix24.webhook(portal.webhook_url, support.opts())
  c:close()
  c:close()
  return true
end)

portal:stop()
print(("leakcheck: %d calls, %d groups, %d failed"):format(total, group_n, failures))
print(("1..%d"):format(group_n))
os.exit(failures == 0 and 0 or 1, true)
