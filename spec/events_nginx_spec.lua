-- Receiving events in a real nginx: docs/events.md's nginx.conf block
-- (the fenced nginx block after its marker line, with only the install
-- paths, the port, the data directory and the allowed domain replaced),
-- plus test locations, with the fake portal installing the app, firing
-- lead events at it over HTTP and uninstalling it.
--
-- The nginx runs LuaJIT whichever Lua runs busted: this file runs under
-- Lua 5.4 only and is pending under the others.

local support = require "support"
local harness = require "nginx_harness"
local socket = require "socket"
local cjson = require "cjson"
local form = require("bitrix24.fake.events").form

local RUN_UNDER = "5.4"
local MARKER = "<!-- nginx.conf used by spec/events_nginx_spec.lua -->"

local quote, write_file, read = support.quote, support.write_file, support.try_read

-- POST a body; -> status, answer.
local function post(url, body, content_type)
  local r = support.send(url, body, { ctype = content_type, timeout = 30 })
  return r.status, r.body
end

-- Waits (up to `wait` s) until f() is truthy; returns its value.
local function eventually(f, wait) return support.eventually(wait or 10, f) end

-- The test locations: the same handler as the README, other functions.
local TEST_LOCATION = [[
location /t/ {
  content_by_lua_block {
    local events = require "bitrix24.events"
    local dir = "@DIR@"
    local function note(file, text)
      local f = assert(io.open(dir .. "/" .. file, "a"))
      f:write(text, "\n")
      f:close()
    end
    local on = {}
    if ngx.var.uri == "/t/slow" then
      -- Waits for the spec's go-ahead: the answer must have gone before.
      on.ONCRMLEADADD = function(event)
        note("slow.log", "started " .. event.data.FIELDS.ID)
        for _ = 1, 400 do
          if io.open(dir .. "/release") then break end
          ngx.sleep(0.025)
        end
        note("slow.log", "finished " .. event.data.FIELDS.ID)
      end
    elseif ngx.var.uri == "/t/fields" then
      on.ONCRMLEADUPDATE = function(event)
        local n = 0
        for _ in pairs(event.data.FIELDS) do n = n + 1 end
        note("fields.log", tostring(n) .. " " .. tostring(event.data.FIELDS.F499))
      end
    elseif ngx.var.uri == "/t/boom" then
      on.ONCRMLEADDELETE = function(event) error("the user's code failed on lead " .. event.data.FIELDS.ID) end
    else
      -- /t/dict and /t/refresh: read the lead with the portal's client.
      on.ONCRMLEADUPDATE = function(event, client)
        local lead, err = client:call("crm.lead.get", { id = event.data.FIELDS.ID })
        note(ngx.var.uri:sub(4) .. ".log", lead and lead.TITLE or tostring(err))
      end
    end
    local store = ngx.var.uri == "/t/dict" and events.shared_dict_stores("bitrix24") or events.file_stores(dir)
    events.handle { store = store, install = { domains = { "@DOMAIN@" } }, on = on,
      client_id = "@CLIENT_ID@", client_secret = "@CLIENT_SECRET@", token_url = "@TOKEN_URL@" }
  }
}
]]

describe("receiving events #nginx", function()
  if support.LUA_VERSION ~= RUN_UNDER then
    pending("runs under Lua " .. RUN_UNDER .. " only (the nginx runs its own LuaJIT)")
    return
  end

  local portal, nginx, ROOT, dir, events_url, test_url, client, app_token, domain

  local function error_log() return nginx and nginx:error_log() or "" end

  local function deliveries() return portal:events().deliveries end

  -- Fires through `fire` (a function calling the portal), then waits for
  -- the one new delivery and returns it.
  local function delivered(fire)
    local before = #deliveries()
    fire()
    return eventually(function()
      local d = deliveries()
      return #d > before and d[before + 1] or nil
    end) or error("the fake portal delivered nothing")
  end

  local function conf(prefix, port, test_port)
    dir = prefix .. "/data"
    os.execute("mkdir -p " .. quote(dir))
    local replace = harness.replace
    local block = harness.doc_block("docs/events.md", MARKER)
    block = replace(block, "/usr/local/share/lua/5.1/", ROOT .. "/lua/")
    block = replace(block, "/usr/local/lib/lua/5.1/", ROOT .. "/build/luajit/")
    block = replace(block, "listen 8080;", "listen 127.0.0.1:" .. port .. ";")
    block = replace(block, "/var/lib/b24-app", dir)
    block = replace(block, "example.bitrix24.com", domain)
    local lines = harness.http_lines(prefix)
    for _, l in ipairs {
      "server {",
      '  listen 127.0.0.1:' .. test_port .. ';',
      (TEST_LOCATION:gsub("@DIR@", dir):gsub("@DOMAIN@", domain):gsub("@CLIENT_ID@", portal.client_id)
        :gsub("@CLIENT_SECRET@", portal.client_secret):gsub("@TOKEN_URL@", portal.token_url)),
      "}",
    } do lines[#lines + 1] = l end
    local a, b = block:find("http {\n", 1, true)
    assert(a, "README's events nginx.conf has no 'http {' line")
    block = block:sub(1, b) .. "    " .. table.concat(lines, "\n    ") .. "\n\n" .. block:sub(b + 1)
    return harness.main_lines(prefix, 256) .. "\n\n" .. block
  end

  setup(function()
    ROOT = harness.root()
    portal = support.start_portal { rate = 1000, burst = 100000 }
    domain = "127.0.0.1:" .. portal.port
    app_token = portal:events().application_token
    local port, test_port = harness.free_port(), harness.free_port()
    events_url = "http://127.0.0.1:" .. port .. "/bitrix24/events"
    test_url = "http://127.0.0.1:" .. test_port .. "/t/"
    nginx = harness.launch(test_port, function(prefix) return conf(prefix, port, test_port) end, {
      B24_CLIENT_ID = portal.client_id, B24_CLIENT_SECRET = portal.client_secret,
      B24_TOKEN_URL = portal.token_url })
    client = require("bitrix24").oauth({ endpoint = portal.oauth_endpoint, access_token = portal.access_token },
      support.opts())
  end)

  teardown(function()
    if nginx then nginx:stop() end
    if portal then portal:stop() end
  end)

  local function stored(name)
    local text = read(dir .. "/" .. name .. ".json")
    return text and cjson.decode(text)
  end

  -- A form body signed like the portal's events (or with `auth` changes).
  local function event_body(name, data, auth)
    local a = { domain = domain, client_endpoint = portal.oauth_endpoint, member_id = portal.member_id,
      application_token = app_token }
    for k, v in pairs(auth or {}) do a[k] = v end
    return form { event = name, data = data, ts = 1700000000, auth = a }
  end

  it("refuses ONAPPINSTALL from a domain the config does not list, storing nothing", function()
    local d = delivered(function()
      portal:install { url = events_url, auth = { domain = "evil.example.com",
        client_endpoint = "https://evil.example.com/rest/" } }
    end)
    assert.equal(401, d.status)
    assert.is_nil(stored(portal.member_id))
    assert.is_nil(stored(portal.member_id .. ".app"))
  end)

  it("refuses ONAPPINSTALL under another member_id than the token endpoint gives its tokens, storing nothing",
      function()
    local squatted = "c0ffee00c0ffee00c0ffee00c0ffee00"
    local d = delivered(function() portal:install { url = events_url, auth = { member_id = squatted } } end)
    assert.equal(401, d.status)
    assert.truthy(error_log():find("whose tokens belong to member " .. portal.member_id, 1, true))
    assert.is_nil(stored(squatted))
    assert.is_nil(stored(squatted .. ".app"))
    assert.is_nil(stored(portal.member_id .. ".app"))
  end)

  it("keeps the tokens the token endpoint renewed for a verified ONAPPINSTALL", function()
    local function renewals() return support.count_requests(portal, "oauth.token") end
    local before, sent = renewals(), portal:info()
    local d = delivered(function() portal:install { url = events_url } end)
    assert.equal(200, d.status, error_log())
    assert.equal(before + 1, renewals())
    local info = portal:info()
    assert.are_not.equal(sent.refresh_token, info.refresh_token)
    assert.equal(info.access_token, stored(portal.member_id).access_token)
    assert.equal(info.refresh_token, stored(portal.member_id).refresh_token)
    assert.equal(app_token, stored(portal.member_id .. ".app").application_token)
  end)

  it("runs the README's function on a lead update, with a client built from the stored tokens", function()
    assert.is_true(client:bind("ONCRMLEADUPDATE", events_url))
    assert.is_true(client:call("crm.lead.update", { id = 1, fields = { TITLE = "Seen by nginx" } }))
    local line = eventually(function()
      local log = read(dir .. "/leads.log")
      return log and log:match("1 [^\n]*")
    end)
    assert.equal("1 Seen by nginx", line, error_log())
    assert.equal(200, deliveries()[#deliveries()].status)
  end)

  it("answers 200 before the user's function has finished", function()
    assert.is_true(client:bind("ONCRMLEADADD", test_url .. "slow"))
    local d = delivered(function() assert(client:call("crm.lead.add", { fields = { TITLE = "slow" } })) end)
    assert.equal(200, d.status)
    -- The portal has its 200; the function started and is still waiting.
    local log = eventually(function() return read(dir .. "/slow.log") end)
    assert.matches("^started %d+\n$", log)
    write_file(dir .. "/release", "")
    assert.truthy(eventually(function() return (read(dir .. "/slow.log") or ""):match("finished") end))
  end)

  it("the fake portal keeps serving while a handler it POSTs to never answers", function()
    local server = assert(socket.bind("127.0.0.1", 0))
    local _, port = server:getsockname()
    server:settimeout(10)
    local silent = "http://127.0.0.1:" .. port .. "/silent"
    assert.is_true(client:bind("ONCRMLEADDELETE", silent))
    -- (the delivery waits up to 10 s for an answer; these calls give up after 5)
    local quick = require("bitrix24").oauth({ endpoint = portal.oauth_endpoint, access_token = portal.access_token },
      support.opts { timeout = 5 })
    assert.is_true(quick:call("crm.lead.delete", { id = 5 }))
    local conn = assert(server:accept())   -- the event arrived, and gets no answer
    assert.truthy(quick:call("crm.lead.get", { id = 1 }))
    conn:close()
    server:close()
    assert.same({ count = 1 }, client:unbind("ONCRMLEADDELETE", silent))
  end)

  it("answers 405 to anything but a POST", function()
    assert.equal(405, support.send(events_url, nil, { method = "GET" }).status)
  end)

  it("rejects a forged token and an unknown member_id with 401, running nothing", function()
    local before = read(dir .. "/leads.log")
    local d = delivered(function()
      portal:fire { event = "ONCRMLEADUPDATE", url = events_url, data = { FIELDS = { ID = 2 } },
        auth = { application_token = "forged" .. app_token } }
    end)
    assert.equal(401, d.status)
    d = delivered(function()
      portal:fire { event = "ONCRMLEADUPDATE", url = events_url, data = { FIELDS = { ID = 2 } },
        auth = { member_id = "0123456789abcdef0123456789abcdef" } }
    end)
    assert.equal(401, d.status)
    assert.equal(401, (post(events_url, event_body("ONCRMLEADUPDATE", { FIELDS = { ID = 2 } },
      { application_token = "" }))))
    socket.sleep(0.3)
    assert.equal(before, read(dir .. "/leads.log"))
  end)

  it("answers every 401 with one text: the requester cannot tell which member_ids are installed", function()
    local texts = {}
    for _, auth in ipairs { { member_id = "0123456789abcdef0123456789abcdef" },
        { application_token = "forged" .. app_token }, { application_token = "" } } do
      local status, text = post(events_url, event_body("ONCRMLEADUPDATE", { FIELDS = { ID = 2 } }, auth))
      assert.equal(401, status)
      texts[#texts + 1] = text
    end
    assert.equal(texts[1], texts[2])
    assert.equal(texts[1], texts[3])
    -- The precise reasons go to the server's log only.
    assert.matches("unknown portal", error_log(), 1, true)
    assert.matches("wrong or missing application_token", error_log(), 1, true)
  end)

  it("parses a body of 500 fields, and rejects malformed, oversized and over-long ones", function()
    local fields = {}
    for i = 6, 499 do fields["F" .. i] = tostring(i) end   -- 494, with 6 other fields: 500
    local body = event_body("ONCRMLEADUPDATE", { FIELDS = fields })
    local n = select(2, body:gsub("&", "")) + 1
    assert.equal(500, n)
    assert.equal(200, (post(test_url .. "fields", body)))
    assert.equal("494 499", eventually(function() return (read(dir .. "/fields.log") or ""):match("[^\n]+") end))
    for i = 500, 1000 do fields["F" .. i] = tostring(i) end
    local status, answer = post(test_url .. "fields", event_body("ONCRMLEADUPDATE", { FIELDS = fields }))
    assert.equal(400, status)
    assert.matches("more than 1000 fields", answer)
    status, answer = post(test_url .. "fields", "event=ONCRMLEADUPDATE&auth[member_id]=x&data[FIELDS][ID=1")
    assert.equal(400, status)
    assert.matches("brackets do not close", answer)
    status = post(test_url .. "fields", event_body("ONCRMLEADUPDATE", { FIELDS = { ID = string.rep("x", 300000) } }))
    assert.equal(413, status)
    assert.is_nil(read(dir .. "/fields.log"):match("\n[^\n]"))   -- still only the first line
  end)

  it("logs an error of the user's function with the event and portal, and keeps serving", function()
    assert.is_true(client:bind("ONCRMLEADDELETE", test_url .. "boom"))
    local d = delivered(function() assert(client:call("crm.lead.delete", { id = 3 })) end)
    assert.equal(200, d.status)
    local log = eventually(function()
      local text = error_log()
      return text:find("the user's code failed on lead 3", 1, true) and text
    end)
    assert.truthy(log)
    local line = log:match("[^\n]*the user's code failed on lead 3[^\n]*")
    assert.matches("ONCRMLEADDELETE", line)
    assert.matches(portal.member_id, line)
    assert.is_nil(log:find(app_token, 1, true))
    assert.is_nil(log:find(portal.access_token, 1, true))
    assert.equal(200, (post(test_url .. "boom", event_body("ONCRMLEADDELETE", { FIELDS = { ID = 4 } }))))
  end)

  it("refreshes an expired token through the portal's store, keeping the rotated pair", function()
    local before = stored(portal.member_id)
    portal:expire_tokens()
    local d = delivered(function()
      portal:fire { event = "ONCRMLEADUPDATE", url = test_url .. "refresh", data = { FIELDS = { ID = 1 } } }
    end)
    assert.equal(200, d.status)
    assert.equal("Seen by nginx", eventually(function() return (read(dir .. "/refresh.log") or ""):match("[^\n]+") end),
      error_log())
    local info = portal:info()
    local after = stored(portal.member_id)
    assert.are_not.equal(before.refresh_token, after.refresh_token)
    assert.equal(info.refresh_token, after.refresh_token)
    assert.equal(info.access_token, after.access_token)
    client = require("bitrix24").oauth({ endpoint = portal.oauth_endpoint, access_token = info.access_token },
      support.opts())
  end)

  it("keeps and removes the tokens in a shared dict store the same way", function()
    local url = test_url .. "dict"
    local d = delivered(function() portal:install { url = url, auth = { application_token = "forged" .. app_token,
      client_endpoint = "https://" .. domain .. "/rest/" } } end)
    assert.equal(401, d.status)   -- an install whose endpoint is not the domain's own
    d = delivered(function() portal:install { url = url } end)
    assert.equal(200, d.status, error_log())
    d = delivered(function()
      portal:fire { event = "ONCRMLEADUPDATE", url = url, data = { FIELDS = { ID = 1 } } }
    end)
    assert.equal(200, d.status)
    assert.equal("Seen by nginx", eventually(function() return (read(dir .. "/dict.log") or ""):match("[^\n]+") end),
      error_log())
    d = delivered(function() portal:uninstall { url = url } end)
    assert.equal(200, d.status)
    d = delivered(function()
      portal:fire { event = "ONCRMLEADUPDATE", url = url, data = { FIELDS = { ID = 1 } } }
    end)
    assert.equal(401, d.status)
  end)

  it("removes the portal's tokens on ONAPPUNINSTALL, then rejects its events", function()
    local d = delivered(function()
      portal:uninstall { url = events_url, auth = { application_token = "forged" .. app_token } }
    end)
    assert.equal(401, d.status)
    assert.equal(portal.access_token, stored(portal.member_id).access_token)
    d = delivered(function() portal:uninstall { url = events_url } end)
    assert.equal(200, d.status)
    assert.same({}, stored(portal.member_id))
    assert.same({}, stored(portal.member_id .. ".app"))
    assert.equal(401, (post(events_url, event_body("ONCRMLEADUPDATE", { FIELDS = { ID = 1 } }))))
  end)
end)
