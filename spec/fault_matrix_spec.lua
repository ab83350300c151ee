-- Every fault the fake portal can inject, against every public call form:
-- client:call, client:batch, the client:each iterator, client:lead_contacts
-- and an OAuth token refresh. Each must end in a defined error object
-- (code, description, a one-line tostring), report nothing as a success
-- that did not fully happen, and leave the client usable.

local support = require "support"
local bitrix24 = require "bitrix24"
local errors = require "bitrix24.errors"

local ITEMS_GET = "crm.lead.contact.items.get"

-- Each fault and what the client must report for it. `ran`: the portal
-- runs the call and damages the answer afterwards (so a write may have
-- happened, but must still not be reported as a success).
local FAULTS = {
  { name = "latency beyond the timeout", spec = { kind = "latency", delay = 2 }, code = "TIMEOUT", ran = true },
  { name = "html502", spec = { kind = "html502" }, code = "BAD_RESPONSE",
    refresh_code = "REFRESH_FAILED" },
  { name = "truncate", spec = { kind = "truncate" }, code = "NETWORK_ERROR", ran = true },
  { name = "malformed", spec = { kind = "malformed" }, code = "BAD_RESPONSE", ran = true,
    refresh_code = "REFRESH_FAILED" },
  { name = "reset", spec = { kind = "reset" }, code = "NETWORK_ERROR" },
  { name = "error500", spec = { kind = "error500" }, code = "INTERNAL_SERVER_ERROR" },
  { name = "error200", spec = { kind = "error200" }, code = "ERROR_CORE" },
  { name = "redirect to another host", spec = { kind = "redirect" }, code = "PORTAL_MOVED",
    refresh_code = "REFRESH_FAILED" },
  { name = "canned 503", spec = { kind = "canned", status = 503,
      body = '{"error":"QUERY_LIMIT_EXCEEDED","error_description":"Too many requests"}' },
    code = "QUERY_LIMIT_EXCEEDED" },
  { name = "canned 429 (HTML)", spec = { kind = "canned", status = 429,
      body = "<html><body>429 Too Many Requests</body></html>" }, code = "BAD_RESPONSE",
    refresh_code = "REFRESH_FAILED" },
}

local function fault_for(f, method)
  local spec = {}
  for k, v in pairs(f.spec) do spec[k] = v end
  spec.method = method
  return spec
end

-- A defined error object: a known shape, and one line when shown.
local function assert_error(err, code)
  assert.is_true(errors.is_error(err), "not an error object: " .. tostring(err))
  assert.equal(code, err.code, tostring(err))
  assert.is_string(err.description)
  local shown = tostring(err)
  assert.is_nil(shown:find("[\r\n]"), "tostring is not one line: " .. shown)
  assert.matches("^bitrix24 ", shown)
end

describe("fault matrix", function()
  local portal, client
  -- One try, and a timeout the latency fault (2 s) exceeds.
  support.use_portal({ client = { timeout = 1 }, reset = { tokens = true } },
    function(p, c) portal, client = p, c end)

  -- The client works for a clean call after the portal is reset.
  local function assert_usable(c)
    portal:reset()
    local rows, err = (c or client):call(ITEMS_GET, { id = 1 })
    assert.is_nil(err)
    assert.equal(1010, rows[1].CONTACT_ID)
  end

  -- Lead 2 has no contacts in the default data; a write that failed
  -- before it ran must leave it so.
  local function lead2_contacts()
    portal:fault { clear = true }
    return assert(client:call(ITEMS_GET, { id = 2 }))
  end

  for _, f in ipairs(FAULTS) do
    describe(f.name, function()
      it("client:call returns nil and the error", function()
        portal:fault(fault_for(f, "crm.lead.contact.add"))
        local result, err, meta = client:call("crm.lead.contact.add", { id = 2, fields = { CONTACT_ID = 1010 } })
        assert.is_nil(result)
        assert.is_nil(meta)
        assert_error(err, f.code)
        local log = portal:requests()
        -- libcurl may resend once on a reused connection closed before any
        -- byte of the answer (reset); never more than that with tries = 1.
        assert.is_true(#log >= 1 and #log <= 2, #log .. " requests")
        if not f.ran then assert.same({}, lead2_contacts()) end
        assert_usable()
      end)

      it("client:batch returns nil and the error, no partial results", function()
        portal:fault(fault_for(f, "batch"))
        local results, err = client:batch {
          first = { ITEMS_GET, { id = 1 } },
          bind = { "crm.lead.contact.add", { id = 2, fields = { CONTACT_ID = 1010 } } },
        }
        assert.is_nil(results)
        assert_error(err, f.code)
        assert.same({}, err.partial)
        if not f.ran then assert.same({}, lead2_contacts()) end
        assert_usable()
      end)

      it("client:each yields false and the error once, then ends", function()
        portal:fault(fault_for(f, "crm.lead.list"))
        local rows, errs = 0, {}
        for row, err in client:each("crm.lead.list", { select = { "ID" } }) do
          if row then rows = rows + 1 else errs[#errs + 1] = err end
        end
        assert.equal(0, rows)
        assert.equal(1, #errs)
        assert_error(errs[1], f.code)
        assert_usable()
      end)

      it("client:lead_contacts returns nil and the error, with empty partial results", function()
        portal:fault(fault_for(f, "batch"))
        local ids = {}
        for i = 1, 60 do ids[i] = i end
        local rows, err = client:lead_contacts(ids)
        assert.is_nil(rows)
        assert_error(err, f.code)
        assert.same({ rows = {}, errors = {} }, err.partial)
        local n = #portal:requests()   -- the first request of two (1 or 2: see client:call)
        assert.is_true(n >= 1 and n <= 2, n .. " requests")
        assert_usable()
      end)

      it("an OAuth refresh at the token endpoint fails with a defined error", function()
        local refreshed = 0
        local c = bitrix24.oauth(support.oauth_config(portal, {
          on_refresh = function() refreshed = refreshed + 1 end,
        }), support.opts { timeout = 1 })
        portal:expire_tokens()
        portal:fault(fault_for(f, "oauth.token"))
        local result, err = c:call(ITEMS_GET, { id = 1 })
        assert.is_nil(result)
        assert_error(err, f.refresh_code or f.code)
        assert.equal(0, refreshed)
        -- The call was not repeated without a new token.
        local methods = {}
        for _, r in ipairs(portal:requests()) do methods[#methods + 1] = r.method end
        assert.equal(ITEMS_GET, methods[1])
        assert.equal("oauth.token", methods[2])
        assert.is_nil(methods[4])
        portal:fault { clear = true }
        if f.ran then
          -- The token endpoint did rotate the tokens, and the answer was
          -- lost: Bitrix24 then refuses the old refresh token. The client
          -- must say so at once (no hang on a stuck refresh).
          local t0 = os.time()
          local _, err2 = c:call(ITEMS_GET, { id = 1 })
          assert_error(err2, "invalid_grant")
          assert.matches("re%-authorize", err2.description)
          assert.is_true(os.time() - t0 < 10)
        else
          -- Nothing happened at the endpoint: the same client refreshes now.
          local rows, err2 = c:call(ITEMS_GET, { id = 1 })
          assert.is_nil(err2)
          assert.equal(1010, rows[1].CONTACT_ID)
          assert.equal(1, refreshed)
        end
        c:close()
      end)
    end)
  end
end)
