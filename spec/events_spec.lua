-- Receiving events in plain Lua (every Lua version): bitrix24.events.parse,
-- the verification in events.receive (file stores, real fake portals whose
-- token endpoints vouch for ONAPPINSTALL's member_id), client:bind/unbind/event_bindings, and
-- the offline consumer surviving a kill -9 between get and clear.

local support = require "support"
local bitrix24 = require "bitrix24"
local events = require "bitrix24.events"
local form = require("bitrix24.fake.events").form

local function count_keys(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

local function tmpdir()
  local p = io.popen('mktemp -d "${TMPDIR:-/tmp}/b24-events-spec.XXXXXXXX"')
  local dir = p:read("*l")
  p:close()
  return dir
end

describe("events.parse", function()
  it("nests PHP keys, appends [] arrays, decodes + and %XX", function()
    local t = assert(events.parse("event=ONCRMLEADUPDATE&data%5BFIELDS%5D%5BID%5D=1000983&ts=1700000000"
      .. "&auth[domain]=a.bitrix24.com&auth[member_id]=abc&l[]=x&l[]=y+z&l[]=%26%3D&e", nil))
    assert.same({ event = "ONCRMLEADUPDATE", data = { FIELDS = { ID = "1000983" } }, ts = "1700000000",
      auth = { domain = "a.bitrix24.com", member_id = "abc" }, l = { "x", "y z", "&=" }, e = "" }, t)
  end)

  it("keeps explicit numeric keys as strings and lets the last duplicate win, as PHP", function()
    local t = assert(events.parse("a[0]=x&a[1]=y&k=1&k=2&s[b]=1&s=flat&f=flat&f[b]=2",
      "application/x-www-form-urlencoded; charset=utf-8"))
    assert.same({ a = { ["0"] = "x", ["1"] = "y" }, k = "2", s = "flat", f = { b = "2" } }, t)
  end)

  it("parses a body of 500 fields by default, and refuses one over max_fields", function()
    local parts = { "event=ONCRMLEADUPDATE" }
    for i = 1, 499 do parts[#parts + 1] = "data[FIELDS][F" .. i .. "]=" .. i end
    local t = assert(events.parse(table.concat(parts, "&")))
    assert.equal(499, count_keys(t.data.FIELDS))
    assert.equal("499", t.data.FIELDS.F499)
    local t2, err = events.parse(table.concat(parts, "&"), nil, { max_fields = 499 })
    assert.is_nil(t2)
    assert.matches("more than 499 fields", err)
  end)

  it("refuses malformed bodies with a reason instead of dropping fields", function()
    for body, why in pairs {
      ["a[b=1"] = "brackets do not close", ["a=%zz"] = "bad %%%-escape", ["a=%4"] = "bad %%%-escape",
      ["=1"] = "no name", ["a=1&[x]=2"] = "no name",
    } do
      local t, err = events.parse(body)
      assert.is_nil(t, body)
      assert.matches(why, err, 1)
    end
  end)

  it("limits depth and size", function()
    local t, err = events.parse("a" .. string.rep("[x]", 40) .. "=1")
    assert.is_nil(t)
    assert.matches("deeper than 32", err)
    assert.truthy(events.parse("a" .. string.rep("[x]", 31) .. "=1"))
    t, err = events.parse("a=" .. string.rep("x", 300 * 1024))
    assert.is_nil(t)
    assert.matches("larger than 262144 bytes", err)
  end)

  it("takes JSON bodies, and refuses other types", function()
    local t = assert(events.parse('{"event":"ONAPPTEST","data":{"FIELDS":{"ID":5}}}', "application/json"))
    assert.equal(5, t.data.FIELDS.ID)
    assert.is_nil((events.parse("[1]", "application/json")))
    assert.is_nil((events.parse("{", "application/json")))
    local none, err = events.parse("x", "multipart/form-data; boundary=z")
    assert.is_nil(none)
    assert.matches("unsupported content type multipart/form%-data", err)
  end)

  it("raises on a body that is not a string", function()
    assert.has_error(function() events.parse(nil) end, "bitrix24: events.parse: body must be a string, got nil")
  end)
end)

describe("events.same_token", function()
  it("is true only for the same non-empty string", function()
    assert.is_true(events.same_token("abcdef", "abcdef"))
    assert.is_false(events.same_token("abcdef", "abcdeg"))
    assert.is_false(events.same_token("abcdef", "abcde"))
    assert.is_false(events.same_token("abcdef", "abcdefabcdef"))
    assert.is_false(events.same_token("abcdef", ""))
    assert.is_false(events.same_token("", ""))
    assert.is_false(events.same_token("abcdef", nil))
  end)
end)

describe("events.receive", function()
  local portal, dir, app_token, seen, cfg

  local function body(name, auth, data)
    local a = {
      domain = "127.0.0.1:" .. portal.port, client_endpoint = portal.oauth_endpoint,
      server_endpoint = portal.oauth_endpoint, member_id = portal.member_id, application_token = app_token,
      access_token = portal.access_token, refresh_token = portal.refresh_token, expires_in = "3600",
    }
    for k, v in pairs(auth or {}) do a[k] = v ~= false and v or nil end
    if data == false then data = nil else data = data or { FIELDS = { ID = 7 } } end
    return form { event = name, data = data, ts = 1700000000, auth = a }
  end

  local function read_store(name)
    local t = bitrix24.file_store(dir .. "/" .. name .. ".json"):load()
    return t
  end

  setup(function()
    portal = support.start_portal { rate = 1000, burst = 100000 }
    app_token = portal:events().application_token
    dir = tmpdir()
    seen = {}
    cfg = {
      store = events.file_stores(dir), client_id = portal.client_id, client_secret = portal.client_secret,
      token_url = portal.token_url, client_opts = support.opts(),
      install = { domains = { "127.0.0.1:" .. portal.port } },
      log = function(msg) seen[#seen + 1] = { log = msg } end,
      on = {
        ONCRMLEADUPDATE = function(event, client)
          local lead = client and client:call("crm.lead.get", { id = event.data.FIELDS.ID })
          seen[#seen + 1] = { event = event.event, id = event.data.FIELDS.ID, title = lead and lead.TITLE }
        end,
        OnAppTest = function() error("boom " .. app_token) end,   -- names are matched in any case
      },
    }
  end)
  teardown(function()
    portal:stop()
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("rejects an unknown portal before any install, running nothing", function()
    local status, job, why = events.receive(cfg, body("ONCRMLEADUPDATE"))
    assert.equal(401, status)
    assert.is_nil(job)
    assert.equal("unknown portal", why)
    assert.is_nil(read_store(portal.member_id .. ".app"))
  end)

  it("refuses ONAPPINSTALL from a domain not listed, or whose refresh token the token endpoint does not renew",
      function()
    local status, _, why = events.receive(cfg, body("ONAPPINSTALL", { domain = "evil.example.com",
      client_endpoint = "https://evil.example.com/rest/" }))
    assert.equal(401, status)
    assert.matches("not in cfg.install.domains", why)
    status, _, why = events.receive(cfg, body("ONAPPINSTALL", { refresh_token = "forgedforgedforged" }))
    assert.equal(401, status)
    assert.matches("did not renew its tokens (invalid_grant", why, 1, true)
    assert.is_nil(why:find("forgedforgedforged", 1, true))
    status, _, why = events.receive(cfg, body("ONAPPINSTALL", { refresh_token = false }))
    assert.equal(401, status)
    assert.equal("ONAPPINSTALL without a refresh_token", why)
    local nocfg = {}
    for k, v in pairs(cfg) do nocfg[k] = v end
    nocfg.install = nil
    status, _, why = events.receive(nocfg, body("ONAPPINSTALL"))
    assert.equal(401, status)
    assert.matches("cfg.install is not set", why)
    assert.is_nil(read_store(portal.member_id))
  end)

  it("keeps the tokens the token endpoint renewed for a verified ONAPPINSTALL, not the event's", function()
    local sent = { access = portal.access_token, refresh = portal.refresh_token }
    local status = events.receive(cfg, body("ONAPPINSTALL"))
    assert.equal(200, status)
    assert.same({ application_token = app_token, domain = "127.0.0.1:" .. portal.port,
      client_endpoint = portal.oauth_endpoint, member_id = portal.member_id }, read_store(portal.member_id .. ".app"))
    local info = portal:info()
    assert.are_not.equal(sent.refresh, info.refresh_token)   -- the install's refresh token is dead now
    local tokens = read_store(portal.member_id)
    assert.equal(info.access_token, tokens.access_token)
    assert.equal(info.refresh_token, tokens.refresh_token)
    assert.equal(portal.member_id, tokens.member_id)
    assert.equal(portal.oauth_endpoint, tokens.client_endpoint)
  end)

  it("runs the handler with a client of that portal, only after a verified event", function()
    seen = {}
    local status, job = events.receive(cfg, body("ONCRMLEADUPDATE", { access_token = false, refresh_token = false }))
    assert.equal(200, status)
    assert.equal(0, #seen)   -- nothing runs before the answer
    job()
    assert.equal(1, #seen)
    assert.same({ event = "ONCRMLEADUPDATE", id = "7", title = seen[1].title }, seen[1])
    assert.is_string(seen[1].title)
  end)

  it("rejects a forged, missing or other portal's token and an invalid member_id", function()
    for _, auth in ipairs {
      { application_token = "x" .. app_token }, { application_token = false },
      { application_token = app_token:sub(1, -2) }, { member_id = "0123456789abcdef0123456789abcdef" },
      { member_id = "../../etc/passwd" }, { member_id = "offline" }, { member_id = false },
    } do
      local status, job = events.receive(cfg, body("ONCRMLEADUPDATE", auth))
      assert.equal(401, status)
      assert.is_nil(job)
    end
    assert.equal(400, (events.receive(cfg, "event=X&auth[member_id]=%zz")))
    assert.equal(401, (events.receive(cfg, "event=ONCRMLEADUPDATE")))
  end)

  it("logs a failing handler's error with the event and portal, without the token", function()
    seen = {}
    local status, job = events.receive(cfg, body("ONAPPTEST"))
    assert.equal(200, status)
    assert.is_false(job())
    local msg = seen[1].log
    assert.matches("ONAPPTEST", msg)
    assert.matches(portal.member_id, msg)
    assert.matches("boom", msg)
    assert.is_nil(msg:find(app_token, 1, true))
  end)

  it("accepts a verified event with no handler, and an outgoing webhook's fixed token", function()
    local status, job = events.receive(cfg, body("ONCRMLEADDELETE"))
    assert.equal(200, status)
    assert.is_nil(job)
    local hook = { webhook_token = "fixed-token-of-the-webhook", on = { ONCRMLEADADD = function() end } }
    local signed = body("ONCRMLEADADD", { application_token = "fixed-token-of-the-webhook" })
    assert.equal(200, (events.receive(hook, signed)))
    assert.equal(401, (events.receive(hook, body("ONCRMLEADADD"))))
  end)

  it("removes the portal's tokens on a verified ONAPPUNINSTALL, and then knows it no more", function()
    assert.equal(401, (events.receive(cfg, body("ONAPPUNINSTALL", { application_token = "forged-token-1234" }))))
    assert.equal(portal.access_token, read_store(portal.member_id).access_token)
    local status = events.receive(cfg, body("ONAPPUNINSTALL", { access_token = false, refresh_token = false }))
    assert.equal(200, status)
    assert.same({}, read_store(portal.member_id))
    assert.same({}, read_store(portal.member_id .. ".app"))
    assert.equal(401, (events.receive(cfg, body("ONCRMLEADUPDATE"))))
  end)

  it("takes the install callback of an API-only app (auth fields, no event) as ONAPPINSTALL", function()
    assert.same({}, read_store(portal.member_id .. ".app"))
    local status = events.receive(cfg, body(nil, nil, false))
    assert.equal(200, status)
    assert.equal(app_token, read_store(portal.member_id .. ".app").application_token)
    assert.equal(portal:info().access_token, read_store(portal.member_id).access_token)
    local nocfg = {}
    for k, v in pairs(cfg) do nocfg[k] = v end
    nocfg.install = nil
    assert.equal(400, (events.receive(nocfg, body(nil))))   -- without install: no event name
  end)

  it("raises on a bad cfg", function()
    assert.has_error(function() events.receive({ on = {} }, "") end,
      "bitrix24: events: cfg.store (per-portal stores) or cfg.webhook_token is required")
    assert.has_error(function() events.receive({ store = 1 }, "") end,
      "bitrix24: events: cfg.store must be a function, got number")
  end)
end)

describe("installing a portal not known yet", function()
  -- Bitrix24 has one token endpoint for every portal; each fake portal has
  -- its own. So each event goes through the config whose token endpoint
  -- knows the tokens it carries, and both configs share one store
  -- directory: what refuses the squatter is the member_id its own token
  -- endpoint answers, not a token the endpoint has never seen.
  local attacker, victim, dir, logs, renewed, seen

  local function config(token_portal, changes)
    local cfg = {
      store = events.file_stores(dir), client_id = token_portal.client_id,
      client_secret = token_portal.client_secret, token_url = token_portal.token_url, client_opts = support.opts(),
      install = { domains = { "127.0.0.1:" .. attacker.port, "127.0.0.1:" .. victim.port } },
      log = function(msg) logs[#logs + 1] = msg end,
      on_refresh = function(tokens) renewed[#renewed + 1] = tokens end,
      on = {
        ONCRMLEADUPDATE = function(event, client)
          local lead = client and client:call("crm.lead.get", { id = event.data.FIELDS.ID })
          seen[#seen + 1] = { member_id = event.auth.member_id, title = lead and lead.TITLE }
        end,
      },
    }
    for k, v in pairs(changes or {}) do cfg[k] = v ~= false and v or nil end
    return cfg
  end

  -- An event of portal p, with its current tokens (or `auth` changes).
  local function body(p, name, auth)
    local info = p:info()
    local a = { domain = "127.0.0.1:" .. p.port, client_endpoint = p.oauth_endpoint,
      server_endpoint = p.oauth_endpoint, member_id = p.member_id, application_token = p:events().application_token }
    if name == "ONAPPINSTALL" then a.access_token, a.refresh_token = info.access_token, info.refresh_token end
    for k, v in pairs(auth or {}) do a[k] = v end
    return form { event = name, data = { FIELDS = { ID = 1 } }, auth = a }
  end

  local function stored(name) return bitrix24.file_store(dir .. "/" .. name .. ".json"):load() end

  local function logged(text)
    for _, msg in ipairs(logs) do
      if msg:find(text, 1, true) then return msg end
    end
  end

  setup(function()
    attacker = support.start_portal { rate = 1000, burst = 100000 }
    victim = support.start_portal { rate = 1000, burst = 100000 }
    dir = tmpdir()
  end)
  before_each(function() logs, renewed, seen = {}, {}, {} end)
  teardown(function()
    attacker:stop()
    victim:stop()
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("refuses an install under another portal's member_id: the token endpoint names the tokens' own", function()
    local sent = attacker:info().refresh_token
    local status, job, why = events.receive(config(attacker),
      body(attacker, "ONAPPINSTALL", { member_id = victim.member_id }))
    assert.equal(401, status)
    assert.is_nil(job)
    assert.matches("whose tokens belong to member " .. attacker.member_id, why, 1, true)
    assert.truthy(logged("refused ONAPPINSTALL for member " .. victim.member_id))
    assert.is_nil(stored(victim.member_id))
    assert.is_nil(stored(victim.member_id .. ".app"))
    -- The attacker's tokens were renewed: the new pair went to on_refresh, not lost.
    local now = attacker:info().refresh_token
    assert.are_not.equal(sent, now)
    assert.equal(1, #renewed)
    assert.equal(now, renewed[1].refresh_token)
    assert.equal(attacker.member_id, renewed[1].member_id)
    assert.is_nil(stored(attacker.member_id))
    -- Its events in the victim's name find no portal.
    status, job, why = events.receive(config(attacker), body(attacker, "ONCRMLEADUPDATE",
      { member_id = victim.member_id }))
    assert.equal(401, status)
    assert.is_nil(job)
    assert.equal("unknown portal", why)
  end)

  it("refuses an install whose tokens the token endpoint places at another portal's endpoint", function()
    local status, _, why = events.receive(config(attacker), body(attacker, "ONAPPINSTALL", {
      domain = "127.0.0.1:" .. victim.port, client_endpoint = victim.oauth_endpoint }))
    assert.equal(401, status)
    assert.matches("at " .. attacker.oauth_endpoint .. " (per the token endpoint)", why, 1, true)
    assert.is_nil(stored(attacker.member_id .. ".app"))
  end)

  it("refuses every new install without client_id and client_secret, saying so in the log", function()
    local sent = victim:info().refresh_token
    for _, changes in ipairs { { client_id = false }, { client_secret = false } } do
      logs = {}
      local status, _, why = events.receive(config(victim, changes), body(victim, "ONAPPINSTALL"))
      assert.equal(401, status)
      assert.matches("needs cfg.client_id and cfg.client_secret", why, 1, true)
      assert.truthy(logged("needs cfg.client_id and cfg.client_secret"))
    end
    assert.equal(sent, victim:info().refresh_token)   -- nothing went to the token endpoint
    assert.is_nil(stored(victim.member_id .. ".app"))
  end)

  it("fails an install whose renewed tokens were lost on the way, and logs that it must be reinstalled", function()
    victim:fault { method = "oauth.token", kind = "truncate", times = 1 }
    local lost = body(victim, "ONAPPINSTALL")
    local status, _, why = events.receive(config(victim), lost)
    assert.equal(500, status)
    assert.matches("did not renew its tokens", why, 1, true)
    assert.truthy(logged("the portal must reinstall the app"))
    assert.is_nil(stored(victim.member_id .. ".app"))
    -- Its refresh token was renewed all the same: the same install cannot be verified again.
    status, _, why = events.receive(config(victim), lost)
    assert.equal(401, status)
    assert.matches("invalid_grant", why, 1, true)
    assert.is_nil(logged(victim.client_secret))
  end)

  it("installs the real portal afterwards, storing the renewed tokens, and runs only its events", function()
    local sent = victim:info()
    local status = events.receive(config(victim), body(victim, "ONAPPINSTALL"))
    assert.equal(200, status)
    local info = victim:info()
    assert.are_not.equal(sent.refresh_token, info.refresh_token)
    local tokens = stored(victim.member_id)
    assert.equal(info.access_token, tokens.access_token)
    assert.equal(info.refresh_token, tokens.refresh_token)
    assert.equal(1, #renewed)
    assert.equal(info.refresh_token, renewed[1].refresh_token)
    assert.same({ application_token = victim:events().application_token, domain = "127.0.0.1:" .. victim.port,
      client_endpoint = victim.oauth_endpoint, member_id = victim.member_id }, stored(victim.member_id .. ".app"))
    -- The attacker's application token does not pass for the victim's.
    local job
    status, job = events.receive(config(attacker), body(attacker, "ONCRMLEADUPDATE",
      { member_id = victim.member_id }))
    assert.equal(401, status)
    assert.is_nil(job)
    status, job = events.receive(config(victim), body(victim, "ONCRMLEADUPDATE"))
    assert.equal(200, status)
    job()
    assert.equal(1, #seen)
    assert.equal(victim.member_id, seen[1].member_id)
    assert.is_string(seen[1].title)   -- read with the stored, renewed tokens
  end)
end)

describe("event bindings", function()
  local portal, client

  setup(function()
    portal = support.start_portal { rate = 1000, burst = 100000 }
    client = bitrix24.oauth({ endpoint = portal.oauth_endpoint, access_token = portal.access_token },
      support.opts())
  end)
  teardown(function() portal:stop() end)

  it("binds, lists and unbinds online and offline handlers", function()
    assert.is_true(client:bind("OnCrmLeadUpdate", "http://127.0.0.1:9/h"))
    assert.is_true(client:bind("ONCRMLEADADD", nil, { event_type = "offline" }))
    local list = assert(client:event_bindings())
    assert.same({ { event = "ONCRMLEADUPDATE", handler = "http://127.0.0.1:9/h", auth_type = "0", offline = 0 },
      { event = "ONCRMLEADADD", handler = "", auth_type = "0", offline = 1 } }, list)
    local again, err = client:bind("ONCRMLEADUPDATE", "http://127.0.0.1:9/h")
    assert.is_nil(again)
    assert.equal("Unable to set event handler", err.description)
    assert.same({ count = 1 }, client:unbind("ONCRMLEADUPDATE", "http://127.0.0.1:9/h"))
    assert.same({ count = 1 }, client:unbind("ONCRMLEADADD", nil, { event_type = "offline" }))
    assert.same({}, client:event_bindings())
    local none
    none, err = client:bind("ONNOSUCHEVENT", "http://127.0.0.1:9/h")
    assert.is_nil(none)
    assert.equal("ERROR_EVENT_NOT_FOUND", err.code)
  end)

  it("raises for a webhook client and bad arguments, sending nothing", function()
    local hook = bitrix24.webhook(portal.webhook_url, support.opts())
    local before = #portal:requests()
    assert.has_error(function() hook:bind("ONCRMLEADUPDATE", "http://127.0.0.1:9/h") end)
    local ok, err = pcall(function() hook:bind("ONCRMLEADUPDATE", "http://127.0.0.1:9/h") end)
    assert.is_false(ok)
    assert.matches("^spec/events_spec.lua:%d+: bitrix24: bind: Bitrix24's event methods take application "
      .. "%(OAuth%) auth only", err)
    ok, err = pcall(function() hook:event_bindings() end)
    assert.matches("^spec/events_spec.lua:%d+: bitrix24: event_bindings:", err)
    ok, err = pcall(function() events.consume_offline(hook, {}) end)
    assert.matches("^spec/events_spec.lua:%d+: bitrix24: consume_offline:", err)
    assert.has_error(function() hook:event_bindings() end)
    assert.has_error(function() hook:unbind("ONCRMLEADUPDATE", "http://127.0.0.1:9/h") end)
    assert.has_error(function() events.consume_offline(hook, { store = {}, handler = print }) end)
    assert.has_error(function() events.consume_offline(nil, {}) end,
      "bitrix24: consume_offline: Bitrix24's event methods take application (OAuth) auth only, and this is "
      .. "not an OAuth client (outgoing webhooks are set up in Bitrix24's UI)")
    assert.has_error(function() client:bind("ONCRMLEADADD", "http://x/", { event_type = "offline" }) end)
    assert.has_error(function() client:bind("ONCRMLEADADD", "ftp://x/") end)
    assert.has_error(function() client:bind("ONCRMLEADADD", "http://x/", { nope = 1 }) end)
    assert.equal(before, #portal:requests())
  end)
end)

describe("the offline consumer", function()
  local portal, client, dir

  setup(function()
    portal = support.start_portal { rate = 1000, burst = 100000 }
    client = bitrix24.oauth({ endpoint = portal.oauth_endpoint, access_token = portal.access_token },
      support.opts())
    dir = tmpdir()
  end)
  teardown(function()
    portal:stop()
    os.execute("rm -rf '" .. dir .. "'")
  end)

  local function queued()
    local rows = assert(client:call("event.offline.list"))
    return rows
  end

  -- A child process consuming the queue; it kills itself with SIGKILL
  -- after handling `die_after` events (before their clear).
  local failing
  local function run_child(die_after)
    local script = [[
      package.path = "lua/?.lua;" .. package.path
      package.cpath = "build/]] .. support.LUA_VERSION .. [[/?.so;" .. package.cpath
      local bitrix24 = require "bitrix24"
      local events = require "bitrix24.events"
      local dir, n, die_after = arg[1], 0, tonumber(arg[2])
      local client = bitrix24.oauth({ endpoint = arg[3], access_token = arg[4] },
        { rate = 1000, burst = 100000, tries = 1 })
      local handled, err = events.consume_offline(client, {
        store = bitrix24.file_store(dir .. "/offline.json"), limit = 4,
        handler = function(ev)
          local f = assert(io.open(dir .. "/handled.log", "a"))
          f:write(ev.EVENT_NAME, " ", ev.EVENT_DATA.FIELDS.ID, "\n")
          f:close()
          n = n + 1
          if n == die_after then
            local pid = io.open("/proc/self/stat"):read("*l"):match("^%d+")
            os.execute("kill -9 " .. pid)
          end
          return tostring(ev.EVENT_DATA.FIELDS.ID) ~= arg[5]   -- this lead's handler fails
        end,
      })
      print(handled, err)
    ]]
    local path = dir .. "/child.lua"
    local f = assert(io.open(path, "w"))
    f:write(script)
    f:close()
    return support.run("cd '" .. support.ROOT .. "' && " .. support.LUA .. " " .. path .. " " .. dir .. " "
      .. die_after .. " " .. portal.oauth_endpoint .. " " .. portal.access_token .. " " .. failing)
  end

  it("loses nothing when killed between get and clear, and clears only what was handled", function()
    assert.is_true(client:bind("ONCRMLEADUPDATE", nil, { event_type = "offline" }))
    local ids = {}
    for id = 1, 20 do
      local new = assert(client:call("crm.lead.add", { fields = { TITLE = "lead " .. id } }))
      ids[#ids + 1] = new
      assert(client:call("crm.lead.update", { id = new, fields = { TITLE = "again" } }))
      assert(client:call("crm.lead.update", { id = new, fields = { TITLE = "and again" } }))
    end
    failing = tostring(ids[13])
    -- The current state, not history: one record per lead.
    assert.equal(20, #queued())
    local out, err, status = run_child(6)   -- killed in its second batch of 4
    assert.equal(137, status, out .. err)
    local state = bitrix24.file_store(dir .. "/offline.json"):load()
    assert.is_string(state.process_id)
    assert.equal(16, #queued())   -- the first batch was cleared, the second was not
    local out2, err2, status2 = run_child(0)
    assert.equal(0, status2, out2 .. err2)
    local counts = {}
    for line in io.lines(dir .. "/handled.log") do
      local id = line:match("^ONCRMLEADUPDATE (%d+)$")
      counts[id] = (counts[id] or 0) + 1
    end
    for _, id in ipairs(ids) do
      assert.is_true((counts[tostring(id)] or 0) >= 1, "lead " .. id .. " never handled")
    end
    -- What is left: only the failure, marked as an error.
    local left = queued()
    local failed = {}
    for _, r in ipairs(left) do failed[#failed + 1] = r.EVENT_DATA.FIELDS.ID .. ":" .. r.ERROR end
    assert.same({ failing .. ":1" }, failed)
    assert.same({}, bitrix24.file_store(dir .. "/offline.json"):load())
  end)

  -- event.offline.get reserves (clear=0) or deletes (clear=1) what it
  -- returns: a repeat after a lost answer would strand the first answer's
  -- events under a process_id nobody knows.
  local function offline_gets()
    local n = 0
    for _, r in ipairs(portal:requests()) do
      if tostring(r.method):lower() == "event.offline.get" then n = n + 1 end
    end
    return n
  end

  it("never repeats event.offline.get after a lost answer, even with tries > 1 or retry_writes", function()
    assert.is_true(client:bind("ONCRMLEADADD", nil, { event_type = "offline" }))
    for i = 1, 3 do assert(client:call("crm.lead.add", { fields = { TITLE = "once " .. i } })) end
    for _, extra in ipairs { { tries = 3 }, { tries = 3, retry_writes = true } } do
      local c = bitrix24.oauth({ endpoint = portal.oauth_endpoint, access_token = portal.access_token },
        support.opts(extra))
      portal:fault { kind = "malformed", method = "event.offline.get", times = 1 }
      local before = offline_gets()
      local handled, err = events.consume_offline(c, {
        store = bitrix24.file_store(dir .. "/once.json"), handler = function() return true end })
      assert.is_nil(handled)
      assert.equal("BAD_RESPONSE", err.code)
      assert.equal(1, err.tries)
      assert.equal(1, offline_gets() - before)
      c:close()
    end
  end)

  it("never repeats a batch carrying event.offline.get, even with retry_writes", function()
    local c = bitrix24.oauth({ endpoint = portal.oauth_endpoint, access_token = portal.access_token },
      support.opts { tries = 3, retry_writes = true })
    local function batches()
      local n = 0
      for _, r in ipairs(portal:requests()) do if tostring(r.method):lower() == "batch" then n = n + 1 end end
      return n
    end
    portal:fault { kind = "malformed", method = "batch", times = 1 }
    local before = batches()
    local res, err = c:batch { a = { "event.offline.get", { clear = 0 } }, b = { "crm.lead.list" } }
    assert.is_nil(res)
    assert.equal("BAD_RESPONSE", err.code)
    assert.equal(1, batches() - before)
    c:close()
  end)
end)
