-- Programmer errors: raised with a message naming the bad argument, and
-- nothing reaches the portal.

local support = require "support"
local bitrix24 = require "bitrix24"

local ITEMS_GET = "crm.lead.contact.items.get"

describe("programmer errors", function()
  local portal, client
  support.use_portal({ client = true }, function(p, c) portal, client = p, c end)
  after_each(function()
    assert.equal(0, #portal:requests(), "a request was sent for bad input")
  end)

  local function raises(pattern, f)
    local ok, msg = pcall(f)
    assert.is_false(ok, "expected an error matching " .. pattern)
    assert.matches(pattern, tostring(msg))
    return msg
  end

  for _, bad in ipairs { "", "crm/lead", "crm.lead..get", ".crm", "crm.", "a b", "crm.lead?x=1",
    "crm#x", "crm\0x", "лид.get", "../rest" } do
    it("rejects the method name " .. string.format("%q", bad), function()
      raises("method must be a non%-empty string", function() client:call(bad, {}) end)
    end)
  end

  it("rejects a method that is not a string", function()
    raises("method must be", function() client:call(42, {}) end)
    raises("method must be", function() client:call(nil, {}) end)
  end)

  it("rejects params that are not a table", function()
    raises("params must be a table or nil, got string", function() client:call(ITEMS_GET, "id=1") end)
    raises("params must be a table or nil, got number", function() client:call(ITEMS_GET, 1) end)
  end)

  for _, bad in ipairs { 0, -1, 1.5, "abc", "1.0", "", true, {}, 2^60 } do
    it("rejects the lead id " .. tostring(bad) .. " (" .. type(bad) .. ")", function()
      raises("params%.id must be a positive integer", function() client:call(ITEMS_GET, { id = bad }) end)
    end)
  end

  it("rejects a missing lead id", function()
    raises("params%.id must be a positive integer", function() client:call(ITEMS_GET, {}) end)
    raises("params%.id must be a positive integer", function() client:call(ITEMS_GET) end)
  end)

  it("names the caller's line, not the library's", function()
    local msg = raises("params%.id", function() client:call(ITEMS_GET, { id = 0 }); return nil end)
    assert.matches("validation_spec%.lua:%d+:", msg)
  end)

  it("rejects params that cannot be JSON", function()
    raises("params cannot be sent as JSON", function() client:call("crm.lead.list", { f = print }) end)
    local cyclic = {}
    cyclic.self = cyclic
    raises("params cannot be sent as JSON", function() client:call("crm.lead.list", cyclic) end)
  end)

  it("rejects strings that are not UTF-8, naming the key", function()
    raises("cannot encode a string that is not UTF%-8 at fields%.TITLE", function()
      client:call("crm.lead.add", { fields = { TITLE = "caf\233" } })
    end)
    raises("NaN or infinite number at n", function() client:call("crm.lead.add", { n = 1 / 0 }) end)
  end)

  it("rejects bad client configuration", function()
    raises("webhook URL must be a string", function() bitrix24.webhook(nil) end)
    raises("webhook URL must be an http%(s%) URL", function() bitrix24.webhook("ftp://x/rest/1/c/") end)
    raises("webhook URL must look like", function() bitrix24.webhook("https://portal.example/rest/") end)
    raises("plain http:// to portal%.example", function()
      bitrix24.webhook("http://portal.example/rest/1/abcd1234/")
    end)
    raises("unknown option opts%.timout", function()
      bitrix24.webhook("https://portal.example/rest/1/abcd1234/", support.opts { timout = 5 })
    end)
    raises("opts%.timeout must be a number", function()
      bitrix24.webhook("https://portal.example/rest/1/abcd1234/", support.opts { timeout = "5" })
    end)
    raises("opts%.timeout must be positive", function()
      bitrix24.webhook("https://portal.example/rest/1/abcd1234/", support.opts { timeout = -1 })
    end)
    raises("access_token is required", function()
      bitrix24.oauth { endpoint = "https://portal.example/rest/" }
    end)
    raises("oauth config must be a table", function() bitrix24.oauth("token") end)
    raises("on_refresh must be a function", function()
      bitrix24.oauth { endpoint = "https://portal.example/rest/", access_token = "abcd", on_refresh = true }
    end)
  end)

  it("allows plain http:// to a remote host only when asked", function()
    local c = bitrix24.webhook("http://portal.example/rest/1/abcd1234/", support.opts { allow_http = true })
    assert.matches("http://portal.example", tostring(c), 1, true)
    c:close()
  end)
end)
