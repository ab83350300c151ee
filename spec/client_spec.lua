-- client:call against the fake portal over real HTTP: results, the
-- envelope, every kind of failure, and OAuth.

local support = require "support"
local bitrix24 = require "bitrix24"
local socket = require "socket"

local ITEMS_GET = "crm.lead.contact.items.get"

describe("client:call", function()
  local portal, client
  support.use_portal({ client = true }, function(p, c) portal, client = p, c end)

  it("returns lead 1's contacts as rows of Lua values, in the server's order", function()
    local rows, err, meta = client:call(ITEMS_GET, { id = 1 })
    assert.is_nil(err)
    assert.same({
      { CONTACT_ID = 1010, SORT = 10, ROLE_ID = 0, IS_PRIMARY = "Y" },
      { CONTACT_ID = 1011, SORT = 20, ROLE_ID = 0, IS_PRIMARY = "N" },
    }, rows)
    if support.HAS_INTEGERS then
      for _, row in ipairs(rows) do
        assert.equal("integer", math.type(row.CONTACT_ID))
        assert.equal("integer", math.type(row.SORT))
        assert.equal("integer", math.type(row.ROLE_ID))
      end
    end
    assert.equal(rows, meta.result)
    assert.is_number(meta.time.start)
    assert.is_number(meta.time.duration)
    assert.is_string(meta.time.date_start)
  end)

  it("accepts the id as a string of digits", function()
    local rows = client:call(ITEMS_GET, { id = "1" })
    assert.equal(2, #rows)
  end)

  it("sends one POST with a JSON body to <webhook><method>", function()
    client:call(ITEMS_GET, { id = 1 })
    local log = portal:requests()
    assert.equal(1, #log)
    assert.equal("POST", log[1].http_method)
    assert.equal(ITEMS_GET, log[1].method)
    assert.equal("webhook", log[1].auth)
    assert.equal(1, tonumber(log[1].params.id))
  end)

  it("sends numbers exactly, beyond cjson's 14 digits", function()
    client:call("crm.lead.list", { filter = { [">ID"] = 123456789012345 }, x = 0.1 + 0.2, s = "é\"\n" })
    local p = portal:requests()[1].params
    assert.equal(123456789012345, p.filter[">ID"])
    assert.equal(0.1 + 0.2, p.x)
    assert.equal("é\"\n", p.s)
  end)

  it("returns an empty table for a lead without contacts", function()
    local rows, err = client:call(ITEMS_GET, { id = 2 })
    assert.is_nil(err)
    assert.same({}, rows)
  end)

  it("keeps the empty error code of Bitrix24's own errors", function()
    local ok, err = client:call("crm.lead.contact.add", { id = 999999, fields = { CONTACT_ID = 1010 } })
    assert.is_nil(ok)
    assert.equal("", err.code)
    assert.equal("Not found.", err.description)
    assert.equal(400, err.status)
    assert.equal("crm.lead.contact.add", err.method)
    assert.equal("portal", err.kind)
    assert.matches("Not found%.", tostring(err))
  end)

  it("returns a documented NOT_FOUND error as it came", function()
    portal:fault { method = ITEMS_GET, kind = "canned", status = 400,
      body = '{"error":"NOT_FOUND","error_description":"Not found."}' }
    local rows, err = client:call(ITEMS_GET, { id = 1 })
    assert.is_nil(rows)
    assert.equal("NOT_FOUND", err.code)
    assert.equal(400, err.status)
  end)

  it("treats an error envelope sent with HTTP 200 as an error", function()
    portal:fault { method = ITEMS_GET, kind = "error200" }
    local rows, err = client:call(ITEMS_GET, { id = 1 })
    assert.is_nil(rows)
    assert.equal(200, err.status)
    assert.is_string(err.code)
    assert.is_string(err.description)
  end)

  for _, case in ipairs {
    { 401, "NO_AUTH_FOUND", "Wrong authorization data" },
    { 403, "ACCESS_DENIED", "Access denied!" },
    { 500, "INTERNAL_SERVER_ERROR", "Internal server error" },
    { 503, "QUERY_LIMIT_EXCEEDED", "Too many requests" },
    { 429, "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit." },
  } do
    it("returns the " .. case[1] .. " " .. case[2] .. " envelope as an error object", function()
      portal:fault { method = ITEMS_GET, kind = "canned", status = case[1],
        body = '{"error":"' .. case[2] .. '","error_description":"' .. case[3] .. '"}' }
      local rows, err = client:call(ITEMS_GET, { id = 1 })
      assert.is_nil(rows)
      assert.same({ case[2], case[3], case[1], ITEMS_GET },
        { err.code, err.description, err.status, err.method })
      assert.equal("bitrix24 " .. ITEMS_GET .. ": " .. case[2] .. ": " .. case[3]
        .. " (HTTP " .. case[1] .. ")", tostring(err))
    end)
  end

  it("gets 403 ACCESS_DENIED for a lead the webhook user may not read", function()
    local rows, err = client:call(ITEMS_GET, { id = 13 })
    assert.is_nil(rows)
    assert.equal("ACCESS_DENIED", err.code)
    assert.equal(403, err.status)
  end)

  it("gets 404 ERROR_METHOD_NOT_FOUND for an unknown method", function()
    local _, err = client:call("crm.lead.contact.nosuch", { id = 1 })
    assert.equal("ERROR_METHOD_NOT_FOUND", err.code)
    assert.equal(404, err.status)
  end)

  it("reports a proxy's HTML 502 page as BAD_RESPONSE with the status", function()
    portal:fault { method = ITEMS_GET, kind = "html502" }
    local rows, err = client:call(ITEMS_GET, { id = 1 })
    assert.is_nil(rows)
    assert.equal("BAD_RESPONSE", err.code)
    assert.equal("client", err.kind)
    assert.equal(502, err.status)
  end)

  it("reports malformed JSON as BAD_RESPONSE", function()
    portal:fault { method = ITEMS_GET, kind = "malformed" }
    local rows, err = client:call(ITEMS_GET, { id = 1 })
    assert.is_nil(rows)
    assert.equal("BAD_RESPONSE", err.code)
    assert.equal(200, err.status)
  end)

  it("reports a body cut short by a closed connection, and keeps working", function()
    portal:fault { method = ITEMS_GET, kind = "truncate", times = 1 }
    local rows, err = client:call(ITEMS_GET, { id = 1 })
    assert.is_nil(rows)
    assert.equal("NETWORK_ERROR", err.code)
    assert.is_nil(err.status)
    rows, err = client:call(ITEMS_GET, { id = 1 })
    assert.is_nil(err)
    assert.equal(2, #rows)
  end)

  it("reports a connection closed without an answer as NETWORK_ERROR", function()
    -- libcurl sends a request once more when a reused keep-alive connection
    -- closes before any byte of the answer (the usual race with a server's
    -- idle timeout), so both tries meet the fault here.
    portal:fault { method = ITEMS_GET, kind = "reset", times = 2 }
    local rows, err = client:call(ITEMS_GET, { id = 1 })
    assert.is_nil(rows)
    assert.equal("NETWORK_ERROR", err.code)
    assert.equal(2, #assert(client:call(ITEMS_GET, { id = 1 })))
  end)

  it("sends a write once when its kept-alive connection is reset, then keeps one connection", function()
    assert(client:call(ITEMS_GET, { id = 1 }))   -- a kept-alive connection to reuse
    portal:reset()
    portal:fault { method = "crm.lead.contact.add", kind = "reset", times = 2 }
    local rows, err = client:call("crm.lead.contact.add", { id = 2, fields = { CONTACT_ID = 1010 } })
    assert.is_nil(rows)
    assert.equal("NETWORK_ERROR", err.code)
    assert.equal(1, #portal:requests())
    portal:reset()   -- (drops the fault's second reset, unused)
    assert(client:call("crm.lead.contact.add", { id = 2, fields = { CONTACT_ID = 1010 } }))
    for _ = 1, 3 do assert(client:call(ITEMS_GET, { id = 1 })) end
    local log = portal:requests()
    assert.equal(4, #log)
    for i = 2, 4 do assert.equal(log[1].conn, log[i].conn) end
  end)

  it("reports an answer that is JSON but no envelope as BAD_RESPONSE", function()
    portal:fault { method = ITEMS_GET, kind = "canned", status = 200, body = '{"foo": 1}' }
    local _, err = client:call(ITEMS_GET, { id = 1 })
    assert.equal("BAD_RESPONSE", err.code)
    portal:fault { method = ITEMS_GET, kind = "canned", status = 200, body = '[1, 2]' }
    _, err = client:call(ITEMS_GET, { id = 1 })
    assert.equal("BAD_RESPONSE", err.code)
    portal:fault { method = ITEMS_GET, kind = "canned", status = 200, body = '' }
    _, err = client:call(ITEMS_GET, { id = 1 })
    assert.equal("BAD_RESPONSE", err.code)
  end)

  it("reports a refused connection as NETWORK_ERROR with no status", function()
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    local c = bitrix24.webhook("http://127.0.0.1:" .. port .. "/rest/1/secretcode1234/", support.opts())
    local rows, err = c:call(ITEMS_GET, { id = 1 })
    c:close()
    assert.is_nil(rows)
    assert.equal("NETWORK_ERROR", err.code)
    assert.is_nil(err.status)
    assert.equal(ITEMS_GET, err.method)
    assert.not_matches("secretcode1234", tostring(err))
  end)

  it("gives up after opts.timeout with TIMEOUT", function()
    portal:fault { method = ITEMS_GET, kind = "latency", delay = 3 }
    local c = bitrix24.webhook(portal.webhook_url, support.opts { timeout = 0.3 })
    local t0 = socket.gettime()
    local rows, err = c:call(ITEMS_GET, { id = 1 })
    local elapsed = socket.gettime() - t0
    c:close()
    assert.is_nil(rows)
    assert.equal("TIMEOUT", err.code)
    assert.is_nil(err.status)
    assert.is_true(elapsed < 2.5, "took " .. elapsed .. " s")
  end)

  it("reuses one keep-alive connection for sequential calls", function()
    for _ = 1, 5 do assert(client:call(ITEMS_GET, { id = 1 })) end
    local log = portal:requests()
    assert.equal(5, #log)
    for i = 2, 5 do assert.equal(log[1].conn, log[i].conn) end
  end)

  it("treats a redirect as PORTAL_MOVED, naming the new address without the secret", function()
    portal:fault { method = ITEMS_GET, kind = "redirect" }
    local rows, err = client:call(ITEMS_GET, { id = 1 })
    assert.is_nil(rows)
    assert.equal("PORTAL_MOVED", err.code)
    assert.equal(302, err.status)
    assert.matches("http", err.description)
    assert.not_matches(portal.code, tostring(err), 1, true)
    assert.equal(1, #portal:requests())
  end)

  it("can be closed, after which calls raise", function()
    local c = bitrix24.webhook(portal.webhook_url, support.opts())
    c:close()
    c:close()
    assert.has_error(function() c:call(ITEMS_GET, { id = 1 }) end)
  end)

  it("has a version and a tostring that hides the webhook code", function()
    assert.is_string(bitrix24._VERSION)
    assert.matches("^%d+%.%d+%.%d+", bitrix24._VERSION)
    local s = tostring(client)
    assert.not_matches(portal.code, s, 1, true)
    assert.matches("127.0.0.1", s, 1, true)
  end)

  it("has the version of its C core, and its default User-Agent carries it", function()
    local core = require "bitrix24.core"
    assert.equal(bitrix24._VERSION, core._VERSION)
    assert(client:call(ITEMS_GET, { id = 1 }))
    -- core.http on its own (no user_agent option) sends the same one.
    local h = core.http()
    assert(h:call(portal.webhook_url .. ITEMS_GET, '{"id":1}'))
    h:close()
    local requests = portal:requests()
    assert.equal(2, #requests)
    assert.equal("bitrix24-lua/" .. core._VERSION, requests[1].user_agent)
    assert.equal("bitrix24-lua/" .. core._VERSION, requests[2].user_agent)
  end)
end)

describe("bitrix24.oauth", function()
  local portal
  support.use_portal({ reset = { tokens = true } }, function(p) portal = p end)

  local function oauth_client(extra)
    local cfg, info = support.oauth_config(portal, extra)
    return bitrix24.oauth(cfg, support.opts()), info
  end

  it("sends the token in the body, never in the URL", function()
    local client, info = oauth_client()
    local rows, err = client:call(ITEMS_GET, { id = 1 })
    client:close()
    assert.is_nil(err)
    assert.equal(2, #rows)
    local log = portal:requests()
    assert.equal(1, #log)
    assert.equal("oauth", log[1].auth)
    assert.equal(info.access_token, log[1].params.auth)
    assert.equal("", log[1].query or "")
  end)

  it("refreshes once on expired_token, hands the new tokens to on_refresh, and repeats the call", function()
    local seen = {}
    local client, info = oauth_client { on_refresh = function(t) seen[#seen + 1] = t end }
    portal:expire_tokens()
    local rows, err = client:call(ITEMS_GET, { id = 1 })
    client:close()
    assert.is_nil(err)
    assert.equal(2, #rows)
    assert.equal(1, #seen)
    assert.is_string(seen[1].access_token)
    assert.is_string(seen[1].refresh_token)
    assert.are_not.equal(info.refresh_token, seen[1].refresh_token)
    local methods = {}
    for _, r in ipairs(portal:requests()) do methods[#methods + 1] = r.method end
    assert.same({ ITEMS_GET, "oauth.token", ITEMS_GET }, methods)
  end)

  it("says re-authorization is needed when the refresh token is rejected", function()
    local client = oauth_client { refresh_token = "not-a-valid-refresh-token" }
    portal:expire_tokens()
    local rows, err = client:call(ITEMS_GET, { id = 1 })
    client:close()
    assert.is_nil(rows)
    assert.equal("invalid_grant", err.code)
    assert.matches("re%-authorize", err.description)
    assert.not_matches("not-a-valid-refresh-token", tostring(err), 1, true)
  end)

  it("fails with expired_token and no refresh when it has no refresh token", function()
    local info = portal:info()
    local client = bitrix24.oauth { endpoint = portal.oauth_endpoint, access_token = info.access_token }
    portal:expire_tokens()
    local _, err = client:call(ITEMS_GET, { id = 1 })
    client:close()
    assert.equal("REFRESH_FAILED", err.code)
    assert.equal(1, #portal:requests())
  end)
end)

describe("bitrix24.from_env", function()
  it("returns nil and NO_CONFIG when nothing is set", function()
    local _, _, status = support.run(support.LUA .. [[ -e '
      package.path = "lua/?.lua;" .. package.path
      package.cpath = "build/]] .. support.LUA_VERSION .. [[/?.so;" .. package.cpath
      local c, err = require("bitrix24").from_env()
      os.exit(c == nil and err.code == "NO_CONFIG" and 0 or 1)']],
      { BITRIX24_WEBHOOK_URL = "", BITRIX24_OAUTH_ENDPOINT = "" })
    assert.equal(0, status)
  end)

  it("builds a webhook client from BITRIX24_WEBHOOK_URL", function()
    local out, _, status = support.run(support.LUA .. [[ -e '
      package.path = "lua/?.lua;" .. package.path
      package.cpath = "build/]] .. support.LUA_VERSION .. [[/?.so;" .. package.cpath
      print(require("bitrix24").from_env())']],
      { BITRIX24_WEBHOOK_URL = "https://portal.example/rest/7/envsecret99/" })
    assert.equal(0, status)
    assert.matches("webhook https://portal.example/rest/7/***/", out, 1, true)
    assert.not_matches("envsecret99", out, 1, true)
  end)
end)
