-- Every code the client produces, triggered over real servers, with its
-- kind; the portal's own codes keep kind "portal". Then what an error
-- carries: a redacted envelope, a description for odd error fields, a
-- redirect without a Location, the URL a hook is told after a redirect.

local support = require "support"
local bitrix24 = require "bitrix24"
local errors = require "bitrix24.errors"
local socket = require "socket"

local ITEMS_GET = "crm.lead.contact.items.get"

describe("error kinds", function()
  local portal, slow, dir

  support.use_portal({ tls = true, reset = { tokens = true } }, function(p) portal = p end)
  -- Operating time in 0.2 s buckets, so a method nears its limit at once.
  support.use_portal({ op_limit = 100, op_bucket = 0.2, op_cost = { [ITEMS_GET] = 0.04 }, reset = false },
    function(p) slow = p end)
  setup(function() dir = support.tmpdir() end)
  teardown(function() support.remove_dir(dir) end)

  local function oauth(extra, opts)
    local cfg = support.oauth_config(portal)
    for k, v in pairs(extra or {}) do cfg[k] = v or nil end   -- false: leave it out
    return bitrix24.oauth(cfg, support.opts(opts))
  end

  local function webhook(opts) return bitrix24.webhook(portal.webhook_url, support.opts(opts)) end

  local function closed_port()
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    return port
  end

  -- How to make each client code happen; each returns the error.
  local TRIGGERS = {
    CANCELLED = function()
      -- client:close() from a progress callback while calls are in flight.
      local c = webhook({ parallel = 4 })
      local list = {}
      for i = 1, 8 do list[i] = { ITEMS_GET, { id = 1 } } end
      local _, errs = c:calls(list, { progress = function() c:close() end })
      return errs[8]
    end,
    NETWORK_ERROR = function()
      local c = bitrix24.webhook("http://127.0.0.1:" .. closed_port() .. "/rest/1/abcd1234/", support.opts())
      return select(2, c:call(ITEMS_GET, { id = 1 }))
    end,
    TIMEOUT = function()
      portal:fault { method = ITEMS_GET, kind = "latency", delay = 2 }
      return select(2, webhook({ timeout = 0.3 }):call(ITEMS_GET, { id = 1 }))
    end,
    TLS_ERROR = function()
      return select(2, bitrix24.webhook(portal.https_webhook_url, support.opts()):call(ITEMS_GET, { id = 1 }))
    end,
    BAD_RESPONSE = function()
      portal:fault { method = ITEMS_GET, kind = "html502" }
      return select(2, webhook():call(ITEMS_GET, { id = 1 }))
    end,
    PORTAL_MOVED = function()
      portal:fault { method = ITEMS_GET, kind = "redirect" }
      return select(2, webhook():call(ITEMS_GET, { id = 1 }))
    end,
    RESPONSE_TOO_LARGE = function()
      portal:fault { method = ITEMS_GET, kind = "canned", body = '{"result":"' .. string.rep("x", 4096) .. '"}' }
      return select(2, webhook({ max_response = 1024 }):call(ITEMS_GET, { id = 1 }))
    end,
    REFRESH_FAILED = function()
      local c = oauth { refresh_token = false, client_id = false, client_secret = false }
      portal:expire_tokens()
      return select(2, c:call(ITEMS_GET, { id = 1 }))
    end,
    STORE_ERROR = function()
      local store = { load = function() end, save = function() return true end }
      local c = oauth { store = store }
      store.save = function() return nil, "disk full" end
      portal:expire_tokens()
      return select(2, c:call(ITEMS_GET, { id = 1 }))
    end,
    BUDGET_ERROR = function()
      local path = dir .. "/budget.json"
      local f = assert(io.open(path, "wb"))
      f:write('{"other":{"level":1e999}}')
      f:close()
      return select(2, webhook({ budget = bitrix24.file_budget(path) }):call(ITEMS_GET, { id = 1 }))
    end,
    RATE_LIMIT_WAIT = function()
      -- A budget of its own: the process's default one holds the other triggers' calls.
      local c = bitrix24.webhook(portal.webhook_url, { rate = 1, burst = 2, deadline = 0.5, tries = 1,
        budget = bitrix24.file_budget(dir .. "/rate.json") })
      assert(c:call(ITEMS_GET, { id = 1 }))
      return select(2, c:call(ITEMS_GET, { id = 1 }))
    end,
    OPERATING_TIME_WAIT = function()
      local c = bitrix24.webhook(slow.webhook_url, support.opts { operating_limit = 0.1, max_wait = 0.01 })
      for _ = 1, 10 do
        local rows, err = c:call(ITEMS_GET, { id = 1 })
        if not rows then return err end
      end
    end,
    NO_CONFIG = function()
      -- A process with no credentials in its environment.
      local out = support.run("env -u BITRIX24_WEBHOOK_URL -u BITRIX24_OAUTH_ENDPOINT " .. support.LUA .. [[ -e '
        package.path = "lua/?.lua;" .. package.path
        package.cpath = "build/]] .. support.LUA_VERSION .. [[/?.so;" .. package.cpath
        local _, err = require("bitrix24").from_env()
        print(err.code .. " " .. err.kind)']])
      local code, kind = out:match("^(%S+) (%S+)")
      return { code = code, kind = kind, description = "(from a child process)" }
    end,
  }

  it("triggers every client code, each of kind client, and the list holds no other", function()
    local seen = {}
    for code, trigger in pairs(TRIGGERS) do
      portal:reset { tokens = true }
      local err = trigger()
      assert.is_table(err, code .. " was not triggered")
      assert.equal(code, err.code, tostring(err.description))
      assert.equal("client", err.kind, code)
      seen[code] = true
    end
    for code in pairs(errors.CLIENT_CODES) do
      assert.is_true(seen[code], code .. " is listed but no test triggers it")
    end
  end)

  it("keeps kind portal for the portal's codes, the limit ones included", function()
    local c = webhook()
    local _, denied = c:call(ITEMS_GET, { id = 13 })
    assert.same({ "ACCESS_DENIED", "portal", 403 }, { denied.code, denied.kind, denied.status })
    portal:fault { method = ITEMS_GET, kind = "canned", status = 503,
      body = '{"error":"QUERY_LIMIT_EXCEEDED","error_description":"Too many requests"}' }
    local _, limited = c:call(ITEMS_GET, { id = 1 })
    assert.same({ "QUERY_LIMIT_EXCEEDED", "portal", 503 }, { limited.code, limited.kind, limited.status })
    portal:reset()
    local _, empty = c:call("crm.lead.contact.add", { id = 99999, fields = { CONTACT_ID = 1010 } })
    assert.same({ "", "portal" }, { empty.code, empty.kind })
    c:close()
  end)

  describe("what an error carries", function()
    it("redacts the secrets in err.response, the raw envelope", function()
      local info = portal:info()
      portal:fault { method = ITEMS_GET, kind = "canned", status = 400, times = 1,
        body = '{"error":"INVALID","error_description":"bad","echo":{"code":"' .. portal.code .. '","list":["x'
          .. info.access_token .. '"]}}' }
      local c = oauth({}, {})
      local _, err = c:call(ITEMS_GET, { id = 1 })
      portal:fault { method = ITEMS_GET, kind = "canned", status = 400, times = 1,
        body = '{"error":"INVALID","error_description":"bad","echo":"' .. portal.code .. '"}' }
      local _, err2 = webhook():call(ITEMS_GET, { id = 1 })
      c:close()
      assert.equal("INVALID", err.code)
      assert.equal("x***", err.response.echo.list[1])
      assert.equal("***", err2.response.echo)
      assert.equal("bad", err2.response.error_description)
    end)

    it("describes an error field that is null, false or empty instead of saying nothing", function()
      local c = webhook()
      for body, want in pairs {
        ['{"error":null}'] = "error null", ['{"error":false}'] = "error false",
        ['{"error":""}'] = 'error ""', ['{"error":{"code":"X"}}'] = 'error "X"',
      } do
        portal:fault { method = ITEMS_GET, kind = "canned", status = 400, body = body, times = 1 }
        local rows, err = c:call(ITEMS_GET, { id = 1 })
        assert.is_nil(rows, body)
        assert.equal("portal", err.kind, body)
        assert.matches(want .. " and no description", err.description, 1, true)
      end
      c:close()
    end)

    it("says a redirect came without a Location, not 'redirect to nil'", function()
      portal:fault { method = ITEMS_GET, kind = "canned", status = 302, body = "" }
      local _, err = webhook():call(ITEMS_GET, { id = 1 })
      assert.equal("PORTAL_MOVED", err.code)
      assert.not_matches("nil", err.description, 1, true)
      assert.matches("no Location", err.description, 1, true)
    end)

    it("tells on_request the URL really requested after a redirect, without the secret", function()
      local urls = {}
      portal:fault { method = ITEMS_GET, kind = "redirect", times = 1,
        location = portal.webhook_url .. ITEMS_GET .. ".json" }
      local c = webhook { on_request = function(info) urls[#urls + 1] = info.url end }
      assert(c:call(ITEMS_GET, { id = 1 }))
      c:close()
      assert.equal(2, #urls)
      assert.equal("/rest/1/***/" .. ITEMS_GET, urls[1]:sub(-#("/rest/1/***/" .. ITEMS_GET)))
      assert.matches("/rest/1/***/" .. ITEMS_GET .. ".json", urls[2], 1, true)
      assert.not_matches(portal.code, table.concat(urls, " "), 1, true)
    end)
  end)
end)
