-- Programmer errors are raised once, by the public function the caller
-- called, so the message points at the caller's own line; and a name on
-- the client that is neither one of its methods nor a dotted method path
-- (a typo such as client:batc{}) is named as such. Nothing is sent.

local support = require "support"
local bitrix24 = require "bitrix24"

-- The line of the statement calling here().
local function here() return debug.getinfo(2, "l").currentline end

describe("programmer errors blame the caller", function()
  local portal, client
  support.use_portal({ client = true }, function(p, c) portal, client = p, c end)
  after_each(function()
    assert.equal(0, #portal:requests(), "a request was sent for bad input")
  end)

  -- f sets line = here() on the line of the bad call; the error must
  -- name this file and that line, once, then the message.
  local line
  local function raises_here(text, f)
    line = nil
    local ok, msg = pcall(f)
    assert.is_false(ok, "expected an error containing " .. text)
    msg = tostring(msg)
    assert.is_number(line)
    local file, at, rest = msg:match("^(.-):(%d+): (.*)$")
    assert.matches("blame_spec%.lua$", file, 1, false, msg)
    assert.equal(line, tonumber(at), msg)
    assert.equal("bitrix24: ", rest:sub(1, 10), msg)
    assert.is_nil(rest:find("blame_spec.lua", 1, true), "more than one position in " .. msg)
    assert.truthy(rest:find(text, 1, true), msg)
    return rest
  end

  it("in the constructors", function()
    raises_here("opts must be a table, got number", function()
      line = here(); bitrix24.webhook(portal.webhook_url, 5) end)
    raises_here("webhook URL must look like", function()
      line = here(); bitrix24.webhook("http://127.0.0.1/rest/", support.opts()) end)
    raises_here("oauth config must be a table, got string", function()
      line = here(); bitrix24.oauth("x") end)
    raises_here("oauth config: client_id must be a non-empty string", function()
      line = here(); bitrix24.oauth { access_token = "a", endpoint = "https://p.example/rest/", client_id = "" } end)
    raises_here("oauth config: token_url uses plain http://", function()
      line = here(); bitrix24.oauth { access_token = "a", endpoint = "https://p.example/rest/",
        token_url = "http://p.example/oauth/" } end)
    raises_here("unknown option opts.colour", function()
      line = here(); bitrix24.oauth({ access_token = "a", endpoint = "https://p.example/rest/" }, { colour = 1 }) end)
    raises_here("file_store: path must be a non-empty string", function()
      line = here(); bitrix24.file_store("") end)
    raises_here("file_budget: path must be a non-empty string", function()
      line = here(); bitrix24.file_budget(nil) end)
    raises_here("shared_dict_store: no lua_shared_dict of that name", function()
      line = here(); bitrix24.shared_dict_store("tokens") end)
    raises_here("shared_dict_budget: dict must be an ngx.shared dictionary or its name", function()
      line = here(); bitrix24.shared_dict_budget({}) end)
  end)

  it("in the client's methods", function()
    raises_here("crm.lead.contact.items.set: params.items must be an array", function()
      line = here(); client:call("crm.lead.contact.items.set", { id = 1, items = 5 }) end)
    raises_here("method must be a non-empty string", function()
      line = here(); client:call("crm lead") end)
    raises_here("batch: commands a and b refer to each other", function()
      line = here(); client:batch { a = { "crm.lead.get", { id = "$result[b]" } },
        b = { "crm.lead.get", { id = "$result[a]" } } } end)
    raises_here("crm.lead.contact.add: params.fields.IS_PRIMARY", function()
      line = here(); client:batch { a = { "crm.lead.contact.add", { id = 1, fields = { CONTACT_ID = 1,
        IS_PRIMARY = "yes" } } } } end)
    raises_here("lead_contacts: ids[2] must be a positive integer", function()
      line = here(); client:lead_contacts { 1, 0 } end)
    raises_here("batch: opts.progress must be a function", function()
      line = here(); client:lead_contacts({ 1 }, { progress = 1 }) end)
    raises_here("each: opts.fast sorts by ID ascending", function()
      line = here(); client:each("crm.lead.list", { order = { ID = "DESC" } }, { fast = true }) end)
    raises_here("call: use client:call(...)", function()
      line = here(); client.call("crm.lead.list") end)
    raises_here("crm.lead.contact.items.get: params.id must be a positive integer", function()
      line = here(); client.crm.lead.contact.items:get { id = 0 } end)
  end)

  it("with the same messages whatever checked them before", function()
    -- References are allowed in a batch only: a batch checked just
    -- before does not let one through a single call.
    assert.has_no.errors(function()
      client:batch { a = { "crm.lead.contact.items.get", { id = "$result[b]" } },
        b = { "crm.lead.contact.items.get", { id = 1 } } }
    end)
    portal:reset()
    raises_here('params.id must be a positive integer, got "$result[b]"', function()
      line = here(); client:call("crm.lead.contact.items.get", { id = "$result[b]" }) end)
  end)
end)

describe("a name on the client that is not a method", function()
  local portal, client
  support.use_portal({ client = true }, function(p, c) portal, client = p, c end)

  local function raises(f)
    local ok, msg = pcall(f)
    assert.is_false(ok)
    assert.equal(0, #portal:requests(), "a request was sent for a typo")
    return (tostring(msg):gsub("^.-blame_spec%.lua:%d+: ", ""))
  end

  it("is named, with the client's method it is closest to", function()
    assert.equal("bitrix24: client:batc is not a method of the client (did you mean batch?)",
      raises(function() client:batc {} end))
    assert.equal("bitrix24: client:Call is not a method of the client (did you mean call?)",
      raises(function() client:Call("crm.lead.list") end))
    assert.equal("bitrix24: client:lead_contact is not a method of the client (did you mean lead_contacts?)",
      raises(function() client:lead_contact { 1 } end))
    assert.equal("bitrix24: client:eachh is not a method of the client (did you mean each?)",
      raises(function() client.eachh("crm.lead.list") end))
    assert.equal("bitrix24: client:bnd is not a method of the client (did you mean bind?)",
      raises(function() client:bnd("ONCRMLEADADD") end))
  end)

  it("without a close method, says how one-word REST methods are called", function()
    local msg = raises(function() client.profile() end)
    assert.equal("bitrix24: client:profile is not a method of the client (its methods: batch, bind, call, calls,"
      .. ' close, each, event_bindings, lead_contacts, unbind); the typed form needs a dotted method name such as'
      .. ' client.crm.lead.list{},'
      .. ' and client:call("profile") calls any method', msg)
  end)

  it("a dotted path is still the typed form, and a bad one is named", function()
    local rows, err = client.crm.lead.contact.items.get { id = 1 }
    assert.is_nil(err)
    assert.is_table(rows)
    assert.equal(1, #portal:requests())
    portal:reset()
    local msg = raises(function() client.crm["lead list"].get {} end)
    assert.equal([[bitrix24: method must be a non-empty string of letters, digits, '_' and '.', got "crm.lead"... (byte 9 is " ")]], msg)
  end)
end)
