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

  it("rejects a method name over 255 bytes, quoting only its start", function()
    local long = "crm." .. string.rep("x", 1024 * 1024)
    for _, f in ipairs {
      function() client:call(long, {}) end,
      function() client:each(long, {}) end,
      function() client:batch { a = { long, {} } } end,
    } do
      local msg = raises("method must be at most 255 bytes, got 1048580 bytes", f)
      assert.is_true(#msg < 300, "the message repeats the name: " .. #msg .. " bytes")
    end
    assert.has_no.errors(function() require("bitrix24.methods").check_name(string.rep("a", 255), 1) end)
  end)

  it("never quotes a bad method name past its first bad byte", function()
    local msg = raises("method must be", function()
      client:call("https://portal.example/rest/1/abcdefsecret42/crm.lead.list", {}) end)
    assert.is_nil(msg:find("abcdefsecret42", 1, true), msg)
    assert.matches('"https"', msg, 1, true)
  end)

  it("refuses params whose reads differ from their raw keys (metatables), sending nothing", function()
    local hidden = function(t) return setmetatable({}, { __index = t }) end
    raises("params must be plain tables", function() client:call(ITEMS_GET, hidden { id = 5 }) end)
    raises("params must be plain tables", function() client:call("crm.lead.contact.add",
      { id = 1, fields = hidden { CONTACT_ID = 5, IS_PRIMARY = true } }) end)
    raises("params must be plain tables", function() client:call("crm.lead.contact.items.set",
      { id = 1, items = setmetatable({ { CONTACT_ID = 5, IS_PRIMARY = true } }, {}) }) end)
    raises("metatable at filter", function() client:call("crm.lead.list", { filter = hidden { ID = 1 } }) end)
    raises("metatable at filter", function() client:batch { a = { "crm.lead.list", { filter = hidden { ID = 1 } } } } end)
    raises("metatable at filter", function() client:each("crm.lead.list", { filter = hidden { ID = 1 } }) end)
    raises("metatable", function() client:batch { a = { ITEMS_GET, hidden { id = 5 } } } end)
  end)

  it("refuses a number key and a string key that would both be sent as one name", function()
    raises('two keys written "1" at filter', function()
      client:call("crm.lead.list", { filter = { [1] = "int", ["1"] = "str" } }) end)
    raises('two keys written "1" at the top level', function()
      client:call("crm.lead.list", { [1] = "int", ["1"] = "str" }) end)
    raises('two keys written "2.5" at filter', function()
      client:batch { a = { "crm.lead.list", { filter = { [2.5] = "n", ["2.5"] = "s" } } } } end)
    raises('two keys written "1"', function()
      client:batch { a = { "crm.lead.list", { filter = { [1] = "int", ["1"] = "str", x = 1 } } } } end)
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
    -- A bound that is infinite, or longer than a day, bounds nothing.
    for _, k in ipairs { "timeout", "connect_timeout", "deadline", "max_wait" } do
      raises("opts%." .. k .. " must be finite", function()
        bitrix24.webhook("https://portal.example/rest/1/abcd1234/", support.opts { [k] = math.huge })
      end)
      raises("opts%." .. k .. " must be positive", function()
        bitrix24.webhook("https://portal.example/rest/1/abcd1234/", support.opts { [k] = 0 / 0 })
      end)
      raises("opts%." .. k .. " must be at most 86400 seconds", function()
        bitrix24.webhook("https://portal.example/rest/1/abcd1234/", support.opts { [k] = 86401 })
      end)
      bitrix24.webhook("https://portal.example/rest/1/abcd1234/", support.opts { [k] = 86400 }):close()
    end
    for _, k in ipairs { "rate", "burst", "tries", "max_response", "operating_limit" } do
      raises("opts%." .. k .. " must be finite", function()
        bitrix24.webhook("https://portal.example/rest/1/abcd1234/", support.opts { [k] = math.huge })
      end)
    end
    raises("access_token is required", function()
      bitrix24.oauth { endpoint = "https://portal.example/rest/" }
    end)
    raises("oauth config must be a table", function() bitrix24.oauth("token") end)
    raises("on_refresh must be a function", function()
      bitrix24.oauth { endpoint = "https://portal.example/rest/", access_token = "abcd", on_refresh = true }
    end)
  end)

  it("rejects a max_response that is not a whole number of bytes in [1, 1 GiB], in the client and the core", function()
    local core = require "bitrix24.core"
    -- (an infinite one is refused as not finite, with every number option, above)
    for _, bad in ipairs { 0.5, 1000.5, 2 ^ 30 + 1 } do
      raises("opts%.max_response must be a whole number of bytes in %[1, 1 GiB%]", function()
        bitrix24.webhook("https://portal.example/rest/1/abcd1234/", support.opts { max_response = bad })
      end)
    end
    for _, bad in ipairs { 0.5, 0, -1, 1000.5, 2 ^ 30 + 1, 0 / 0, "1000" } do
      for _, new in ipairs { core.http, core.multi } do
        local ok, err = pcall(new, { max_response = bad })
        assert.is_false(ok, tostring(bad))
        assert.matches("option 'max_response' must be a whole number of bytes in %[1, 1 GiB%]", tostring(err))
      end
    end
    local h = core.http { max_response = 1 }
    h:close()
    local c = bitrix24.webhook("https://portal.example/rest/1/abcd1234/", support.opts { max_response = 2 ^ 30 })
    c:close()
  end)

  it("allows plain http:// to a remote host only when asked", function()
    local c = bitrix24.webhook("http://portal.example/rest/1/abcd1234/", support.opts { allow_http = true })
    assert.matches("http://portal.example", tostring(c), 1, true)
    c:close()
  end)
end)
