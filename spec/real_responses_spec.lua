-- Every response body recorded from real portals, served over HTTP by the
-- fake portal, must come out of client:call with every value and type
-- intact: integers as integers, floats as floats, strings as strings
-- (CRM ids often arrive as strings), empty arrays, nulls.

local support = require "support"

local DIR = support.REAL_RESPONSES

local STATUS = {
  NO_AUTH_FOUND = 401, QUERY_LIMIT_EXCEEDED = 503, INVALID_REQUEST = 400,
  PAYMENT_REQUIRED = 402, BITRIX_REST_V3_EXCEPTION_ACCESSDENIEDEXCEPTION = 401,
}

local function list_files()
  local p = assert(io.popen("ls " .. DIR .. "/*.json"))
  local files = {}
  for line in p:lines() do files[#files + 1] = line end
  p:close()
  return files
end

describe("real portal answers", function()
  local portal, client
  local files = list_files()

  support.use_portal({ client = true, reset = false }, function(p, c) portal, client = p, c end)

  it("are all there (39 files)", function()
    assert.equal(39, #files)
  end)

  for _, path in ipairs(files) do
    local name = path:match("([^/]+)%.json$")
    it("keep every value of " .. name, function()
      local body = support.read_file(path)
      local ref = support.reference_json(body)
      local err_code = ref.object.error
      local code = type(err_code) == "table" and err_code.object.code or err_code
      portal:fault { method = "crm.lead.contact.items.get", kind = "canned", times = 1,
        status = code and (STATUS[code] or 400) or 200, body = body }
      local result, err, meta = client:call("crm.lead.contact.items.get", { id = 1 })
      if err_code then
        assert.is_nil(result)
        if type(err_code) == "string" then
          assert.equal(err_code, err.code)
          assert.equal(ref.object.error_description, err.description)
        else
          -- REST 3.0's shape: {"error": {"code", "message"}}.
          assert.equal(err_code.object.code, err.code)
          assert.equal(err_code.object.message, err.description)
        end
      else
        assert.is_nil(err)
        local d = support.diff(meta, ref)
        assert.is_nil(d, d)
        assert.equal(meta.result, result)
      end
    end)
  end

  it("can tell a float from an integer (the check itself can fail)", function()
    local ref = support.reference_json('{"a": 1, "b": 1.5, "c": "1"}')
    assert.is_nil(support.diff({ a = 1, b = 1.5, c = "1" }, ref))
    assert.is_string(support.diff({ a = 1, b = 1.5, c = 1 }, ref))
    assert.is_string(support.diff({ a = 1, b = 1.5 }, ref))
    if support.HAS_INTEGERS then
      assert.is_string(support.diff({ a = 1.0, b = 1.5, c = "1" }, ref))
    end
  end)
end)
