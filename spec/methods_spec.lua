-- The six crm.lead.contact methods, through client:call and the typed form
-- (client.crm.lead.contact.items.get{ id = 1 }), with their parameters
-- checked before anything is sent.

local support = require "support"

describe("crm.lead.contact.*", function()
  local portal, client
  support.use_portal({ client = true }, function(p, c) portal, client = p, c end)

  local function contact(id)
    local rows = assert(client.crm.lead.contact.items.get { id = id })
    local out = {}
    for i, r in ipairs(rows) do out[i] = { r.CONTACT_ID, r.SORT, r.IS_PRIMARY } end
    return out
  end

  it("fields describes the binding fields", function()
    local fields = assert(client.crm.lead.contact.fields())
    assert.equal("integer", fields.CONTACT_ID.type)
    assert.is_true(fields.CONTACT_ID.isRequired)
    assert.equal("char", fields.IS_PRIMARY.type)
  end)

  it("the typed form is the same call as client:call", function()
    local a, err, env = client.crm.lead.contact.items.get { id = 1 }
    assert.is_nil(err)
    assert.same(assert(client:call("crm.lead.contact.items.get", { id = 1 })), a)
    assert.is_table(env.time)
    assert.same(a, (client.crm.lead.contact.items:get { id = 1 }))
    assert.equal("bitrix24 method crm.lead.contact.items.get", tostring(client.crm.lead.contact.items.get))
    local log = portal:requests()
    assert.equal(3, #log)
    for _, r in ipairs(log) do assert.equal("crm.lead.contact.items.get", r.method) end
  end)

  it("add binds a contact; a Lua boolean IS_PRIMARY is sent as Y/N", function()
    assert.is_true(client.crm.lead.contact.add { id = 2, fields = { CONTACT_ID = 1010, IS_PRIMARY = true } })
    assert.is_true(client.crm.lead.contact.add { id = 2, fields = { CONTACT_ID = 1011, SORT = 20, IS_PRIMARY = false } })
    assert.same({ { 1010, 10, "Y" }, { 1011, 20, "N" } }, contact(2))
    assert.equal("Y", portal:requests()[1].params.fields.IS_PRIMARY)
  end)

  it("add of a bound contact and delete of an unbound one succeed with false", function()
    local r, err = client.crm.lead.contact.add { id = 1, fields = { CONTACT_ID = 1010 } }
    assert.is_false(r)
    assert.is_nil(err)
    r, err = client.crm.lead.contact.delete { id = 2, fields = { CONTACT_ID = 1010 } }
    assert.is_false(r)
    assert.is_nil(err)
  end)

  it("delete unbinds a contact", function()
    assert.is_true(client.crm.lead.contact.delete { id = 1, fields = { CONTACT_ID = 1011 } })
    assert.same({ { 1010, 10, "Y" } }, contact(1))
  end)

  it("items.set replaces the set, booleans converted", function()
    assert.is_true(client.crm.lead.contact.items.set { id = 1, items = {
      { CONTACT_ID = 1020, SORT = 5, IS_PRIMARY = false },
      { CONTACT_ID = 1021, IS_PRIMARY = true },
    } })
    assert.same({ { 1020, 5, "N" }, { 1021, 20, "Y" } }, contact(1))
  end)

  it("items.delete removes every binding", function()
    assert.is_true(client.crm.lead.contact.items.delete { id = 1 })
    assert.same({}, contact(1))
  end)

  it("a write on a lead the user may only read gets ACCESS_DENIED", function()
    local r, err = client.crm.lead.contact.add { id = 14, fields = { CONTACT_ID = 1010 } }
    assert.is_nil(r)
    assert.equal("ACCESS_DENIED", err.code)
    assert.equal(403, err.status)
  end)

  describe("bad parameters", function()
    after_each(function() assert.equal(0, #portal:requests(), "a request was sent for bad input") end)

    local function raises(pattern, f)
      local ok, msg = pcall(f)
      assert.is_false(ok, pattern)
      assert.matches(pattern, tostring(msg))
    end

    local lc = function() return client.crm.lead.contact end

    it("raise naming the parameter", function()
      for _, m in ipairs { "items.get", "items.delete" } do
        raises("params%.id must be a positive integer", function() client:call("crm.lead.contact." .. m, { id = 0 }) end)
      end
      raises("params%.id must be a positive integer", function() lc().add { fields = { CONTACT_ID = 1 } } end)
      raises("params%.ID must be a positive integer", function() lc().add { ID = "x", fields = { CONTACT_ID = 1 } } end)
      raises("params%.fields must be a table", function() lc().add { id = 1 } end)
      raises("params%.fields%.CONTACT_ID must be a positive integer", function() lc().add { id = 1, fields = {} } end)
      raises("params%.fields%.CONTACT_ID must be a positive integer", function()
        lc().add { id = 1, fields = { CONTACT_ID = 1.5 } } end)
      raises("params%.fields%.SORT must be an integer", function()
        lc().add { id = 1, fields = { CONTACT_ID = 5, SORT = "ten" } } end)
      raises('params%.fields%.IS_PRIMARY must be "Y", "N" or a boolean', function()
        lc().add { id = 1, fields = { CONTACT_ID = 5, IS_PRIMARY = "yes" } } end)
      raises('params%.fields%.IS_PRIMARY must be', function()
        lc().add { id = 1, fields = { CONTACT_ID = 5, IS_PRIMARY = 1 } } end)
      raises("params%.fields must be a table", function() lc().delete { id = 1 } end)
      raises("params%.fields%.CONTACT_ID must be a positive integer", function()
        lc().delete { id = 1, fields = { CONTACT_ID = -5 } } end)
      raises("params%.items must be an array", function() lc().items.set { id = 1 } end)
      raises("params%.items must be an array", function() lc().items.set { id = 1, items = { a = {} } } end)
      raises("params%.items%[2%] must be a table", function()
        lc().items.set { id = 1, items = { { CONTACT_ID = 1 }, 5 } } end)
      raises("params%.items%[1%]%.CONTACT_ID must be a positive integer", function()
        lc().items.set { id = 1, items = { {} } } end)
      raises("params%.items%[1%]%.SORT must be an integer", function()
        lc().items.set { id = 1, items = { { CONTACT_ID = 1, SORT = 1.5 } } } end)
      raises("params must be a table or nil", function() lc().items.get(5) end)
    end)

    it("blame the caller's line in the typed form", function()
      local ok, msg = pcall(function() lc().items.get { id = 0 }; return 1 end)
      assert.is_false(ok)
      assert.matches("methods_spec%.lua:%d+:", msg)
    end)
  end)
end)
