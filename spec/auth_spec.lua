-- Token refresh and stores, TLS, redirects, connection handling, hooks,
-- and secrets kept out of everything the client shows.

local support = require "support"
local bitrix24 = require "bitrix24"
local core = require "bitrix24.core"

local ITEMS_GET = "crm.lead.contact.items.get"

describe("OAuth", function()
  local portal, dir
  support.use_portal({ reset = { tokens = true } }, function(p) portal = p end)

  setup(function() dir = support.tmpdir() end)
  teardown(function() support.remove_dir(dir) end)

  local function config(extra)
    return support.oauth_config(portal, extra)
  end

  local function methods_seen()
    local m = {}
    for _, r in ipairs(portal:requests()) do m[#m + 1] = r.method .. ":" .. string.format("%d", r.status) end
    return m
  end

  it("hands the new tokens to on_refresh before repeating the call", function()
    local seen_at
    local cfg = config { on_refresh = function(t)
      seen_at = #portal:requests()
      assert.is_string(t.access_token)
      assert.is_string(t.refresh_token)
      assert.is_number(t.expires_in)
      assert.is_string(t.member_id)
      assert.is_string(t.client_endpoint)
    end }
    local client = bitrix24.oauth(cfg, support.opts())
    portal:expire_tokens()
    assert(client:call(ITEMS_GET, { id = 1 }))
    client:close()
    assert.equal(2, seen_at)
    assert.same({ ITEMS_GET .. ":401", "oauth.token:200", ITEMS_GET .. ":200" }, methods_seen())
  end)

  it("refreshes only on expired_token, not on other 401s", function()
    local client = bitrix24.oauth((config { access_token = "unknown-token-123" }), support.opts())
    local _, err = client:call(ITEMS_GET, { id = 1 })
    client:close()
    assert.equal("invalid_token", err.code)
    assert.same({ ITEMS_GET .. ":401" }, methods_seen())
  end)

  it("refreshes once per call: a second expiry is an error, not a loop", function()
    local client = bitrix24.oauth((config()), support.opts())
    portal:fault { method = ITEMS_GET, kind = "canned", status = 401,
      body = '{"error":"expired_token","error_description":"The access token provided has expired."}' }
    local _, err = client:call(ITEMS_GET, { id = 1 })
    client:close()
    assert.equal("expired_token", err.code)
    assert.same({ ITEMS_GET .. ":401", "oauth.token:200", ITEMS_GET .. ":401" }, methods_seen())
  end)

  it("honours the client_endpoint the token endpoint returns", function()
    -- Start on the 127.0.0.2 listener; the refresh answers with 127.0.0.1.
    local cfg = config { endpoint = portal.moved_url .. "/rest/" }
    local client = bitrix24.oauth(cfg, support.opts())
    portal:expire_tokens()
    assert(client:call(ITEMS_GET, { id = 1 }))
    assert.matches("127.0.0.1", tostring(client), 1, true)
    client:close()
  end)

  it("keeps two processes sharing a file store from rotating the refresh token twice", function()
    local path = dir .. "/tokens.json"
    os.remove(path)
    -- Seed the store from the config, as a first run would.
    local seed = bitrix24.oauth((config { store = bitrix24.file_store(path) }), support.opts())
    seed:close()
    local perm = support.run("stat -c %a " .. path)
    assert.equal("600", perm:gsub("%s+$", ""))
    portal:expire_tokens()
    local script = support.write_script(dir .. "/worker.lua", ([[
      local bitrix24 = require "bitrix24"
      local client = bitrix24.oauth { endpoint = %q, token_url = %q, client_id = %q, client_secret = %q,
        store = bitrix24.file_store(%q) }
      for i = 1, 5 do
        local rows, err = client:call("crm.lead.contact.items.get", { id = 1 })
        if not rows then print("FAIL " .. tostring(err)) os.exit(1) end
      end
      print("OK")
    ]]):format(portal.oauth_endpoint, portal.token_url, portal.client_id, portal.client_secret, path))
    local out = support.run_two(script)
    assert.equal("OK\nOK\n", out)
    local tokens = 0
    for _, r in ipairs(portal:requests()) do
      if r.method == "oauth.token" then
        tokens = tokens + 1
        assert.equal(200, r.status)
      end
    end
    assert.equal(1, tokens)
    -- The stored refresh token is the live one: a third process can refresh with it.
    portal:expire_tokens()
    assert.equal("OK\n", (support.run(support.LUA .. " " .. script)))
  end)

  it("says re-authorization is needed when the token endpoint refuses", function()
    local client = bitrix24.oauth((config { client_secret = "wrong-secret-456" }), support.opts())
    portal:expire_tokens()
    local _, err = client:call(ITEMS_GET, { id = 1 })
    client:close()
    assert.equal("invalid_client", err.code)
    assert.matches("re%-authorize", err.description)
    assert.not_matches("wrong-secret-456", tostring(err), 1, true)
  end)

  it("rejects a bad store", function()
    assert.has_error(function() bitrix24.oauth((config { store = {} }), support.opts()) end)
    assert.has_error(function() bitrix24.file_store("") end)
  end)
end)

describe("TLS", function()
  local portal
  support.use_portal({ tls = true, reset = false }, function(p) portal = p end)

  it("verifies the certificate by default, and says what to do when it fails", function()
    local client = bitrix24.webhook(portal.https_webhook_url, support.opts())
    local rows, err = client:call(ITEMS_GET, { id = 1 })
    client:close()
    assert.is_nil(rows)
    assert.equal("TLS_ERROR", err.code)
    assert.matches("ca_file", err.description)
    assert.not_matches(portal.code, tostring(err), 1, true)
  end)

  it("works with the portal's CA file, in opts and in the OAuth config", function()
    local client = bitrix24.webhook(portal.https_webhook_url, support.opts { ca_file = portal.ca_file })
    assert.equal(2, #assert(client:call(ITEMS_GET, { id = 1 })))
    client:close()
    local info = portal:info()
    client = bitrix24.oauth { endpoint = portal.https_url .. "/rest/", access_token = info.access_token,
      ca_file = portal.ca_file }
    assert.equal(2, #assert(client:call(ITEMS_GET, { id = 1 })))
    client:close()
  end)

  it("turns verification off only when asked, and says so once on stderr", function()
    local _, err, status = support.run(support.LUA .. [[ -e '
      package.path = "lua/?.lua;" .. package.path
      package.cpath = "build/]] .. support.LUA_VERSION .. [[/?.so;" .. package.cpath
      local b = require "bitrix24"
      for i = 1, 2 do
        local c = b.webhook("]] .. portal.https_webhook_url .. [[", { tls_verify = false })
        assert(c:call("crm.lead.contact.items.get", { id = 1 }))
      end']])
    assert.equal(0, status, err)
    local _, n = err:gsub("verification is OFF", "")
    assert.equal(1, n)
  end)
end)

describe("connections", function()
  local portal

  support.use_portal(nil, function(p) portal = p end)

  it("follows a redirect to the same host with the same POST and body", function()
    portal:fault { method = ITEMS_GET, kind = "redirect", times = 1,
      location = portal.url .. "/rest/1/" .. portal.code .. "/" }
    local client = bitrix24.webhook(portal.webhook_url, support.opts())
    local rows, err = client:call(ITEMS_GET, { id = 1 })
    client:close()
    assert.is_nil(err)
    assert.equal(2, #rows)
    local log = portal:requests()
    assert.equal(2, #log)
    assert.equal(302, log[1].status)
    assert.equal("POST", log[2].http_method)
    assert.equal(1, tonumber(log[2].params.id))
  end)

  it("does not follow a redirect to another host, and names it without the secret", function()
    portal:fault { method = ITEMS_GET, kind = "redirect" }
    local client = bitrix24.webhook(portal.webhook_url, support.opts())
    local rows, err = client:call(ITEMS_GET, { id = 1 })
    client:close()
    assert.is_nil(rows)
    assert.equal("PORTAL_MOVED", err.code)
    assert.matches("127.0.0.2", err.description, 1, true)
    assert.matches("/rest/1/***/", err.description, 1, true)
    assert.not_matches(portal.code, tostring(err), 1, true)
    assert.equal(1, #portal:requests())
  end)

  it("uses one connection for many sequential calls", function()
    local client = bitrix24.webhook(portal.webhook_url, support.opts())
    for _ = 1, 20 do assert(client:call(ITEMS_GET, { id = 1 })) end
    client:close()
    local conns = {}
    for _, r in ipairs(portal:requests()) do conns[r.conn] = true end
    local n = 0
    for _ in pairs(conns) do n = n + 1 end
    assert.equal(1, n)
    assert.equal(20, #portal:requests())
  end)

  it("sends a User-Agent naming the library and its version", function()
    local client = bitrix24.webhook(portal.webhook_url, support.opts())
    assert(client:call(ITEMS_GET, { id = 1 }))
    client:close()
    assert.equal("bitrix24-lua/" .. bitrix24._VERSION, portal:requests()[1].user_agent)
  end)

  it("goes through a proxy from opts.proxy", function()
    -- The portal's nginx answers absolute-form requests itself, so it can
    -- stand in for a proxy: the target address is closed, only the proxy works.
    local url = portal.webhook_url:gsub("^http://[^/]+", "http://127.0.0.3:9")
    local client = bitrix24.webhook(url, support.opts { proxy = portal.url })
    local rows, err = client:call(ITEMS_GET, { id = 1 })
    client:close()
    assert.is_nil(err)
    assert.equal(2, #rows)
    assert.equal("127.0.0.3:9", portal:requests()[1].host)
  end)

  it("goes through a proxy from the environment", function()
    local url = portal.webhook_url:gsub("^http://[^/]+", "http://127.0.0.3:9")
    local out, err, status = support.run("env -u no_proxy -u NO_PROXY http_proxy=" .. portal.url .. " "
      .. support.LUA .. " " .. support.ROOT .. "/bin/b24 crm.lead.contact.items.get id=1",
      { BITRIX24_WEBHOOK_URL = url, LUA_VERSION = support.LUA_VERSION })
    assert.equal(0, status, err)
    assert.matches('"CONTACT_ID":1010', out, 1, true)
  end)

  it("reports calls to on_request and on_response", function()
    local requests, responses = {}, {}
    local client = bitrix24.webhook(portal.webhook_url, support.opts {
      on_request = function(info) requests[#requests + 1] = info end,
      on_response = function(info) responses[#responses + 1] = info end,
    })
    assert(client:call(ITEMS_GET, { id = 1 }))
    client:call(ITEMS_GET, { id = 13 })
    client:close()
    assert.equal(2, #requests)
    assert.equal(ITEMS_GET, requests[1].method)
    assert.matches("/rest/1/***/" .. ITEMS_GET, requests[1].url, 1, true)
    assert.equal(2, #responses)
    assert.equal(200, responses[1].status)
    assert.is_nil(responses[1].code)
    assert.is_number(responses[1].duration)
    assert.is_number(responses[1].operating)
    assert.equal(403, responses[2].status)
    assert.equal("ACCESS_DENIED", responses[2].code)
  end)
end)

describe("secrets", function()
  local portal
  support.use_portal({ tls = true, reset = { tokens = true } }, function(p) portal = p end)

  it("never appear in errors, tostring or hook payloads", function()
    local info = portal:info()
    local secrets = { portal.code, info.access_token, info.refresh_token, info.client_secret }
    local shown = {}
    local function keep(v)
      if type(v) == "table" then
        for k, x in pairs(v) do keep(k); keep(x) end
      elseif v ~= nil then
        shown[#shown + 1] = tostring(v)
      end
    end
    local hooks = { on_request = keep, on_response = keep }
    local hook = bitrix24.webhook(portal.webhook_url, support.opts(hooks))
    local oauth = bitrix24.oauth(support.oauth_config(portal, { on_refresh = function() end }),
      support.opts(hooks))
    keep(tostring(hook))
    keep(tostring(oauth))
    for _, kind in ipairs { "html502", "truncate", "malformed", "reset", "error500", "error200", "redirect" } do
      portal:fault { method = ITEMS_GET, kind = kind, times = 2 }
      keep(select(2, hook:call(ITEMS_GET, { id = 1 })))
      portal:fault { method = ITEMS_GET, kind = kind, times = 2 }
      keep(select(2, oauth:call(ITEMS_GET, { id = 1 })))
    end
    portal:reset()
    keep(select(2, hook:call(ITEMS_GET, { id = 13 })))
    local wrong = bitrix24.webhook((portal.webhook_url:gsub(portal.code, "wrongcode7777")), support.opts())
    keep(select(2, wrong:call(ITEMS_GET, { id = 1 })))
    keep(select(2, bitrix24.webhook(portal.https_webhook_url, support.opts()):call(ITEMS_GET, support.opts { id = 1 })))
    portal:expire_tokens()
    portal:fault { method = "oauth.token", kind = "error500" }
    keep(select(2, oauth:call(ITEMS_GET, { id = 1 })))
    local t = bitrix24.webhook(portal.webhook_url, support.opts { timeout = 0.2 })
    portal:fault { method = ITEMS_GET, kind = "latency", delay = 1 }
    keep(select(2, t:call(ITEMS_GET, { id = 1 })))
    -- Programmer errors too.
    keep(select(2, pcall(hook.call, hook, ITEMS_GET, { id = 0 })))
    keep(select(2, pcall(oauth.call, oauth, "bad/name")))
    assert.is_true(#shown > 30)
    local all = table.concat(shown, "\n")
    for _, s in ipairs(secrets) do
      assert.not_matches(s, all, 1, true)
    end
    assert.not_matches("wrongcode7777", all, 1, true)
    hook:close(); oauth:close(); wrong:close(); t:close()
  end)
end)
