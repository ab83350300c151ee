-- client:batch and client:lead_contacts against the fake portal, and the
-- C encoder of batch sub-queries.

local support = require "support"
local core = require "bitrix24.core"

local ITEMS_GET = "crm.lead.contact.items.get"
local REAL = support.REAL_RESPONSES .. "/"

describe("core.query", function()
  it("writes PHP-style keys, arrays 0-based, map keys sorted", function()
    assert.equal("fields[CONTACT_ID]=5&fields[IS_PRIMARY]=Y&id=1",
      core.query { id = 1, fields = { CONTACT_ID = 5, IS_PRIMARY = "Y" } })
    assert.equal("id=7&items[0][CONTACT_ID]=1&items[0][SORT]=10&items[1][CONTACT_ID]=2",
      core.query { id = 7, items = { { CONTACT_ID = 1, SORT = 10 }, { CONTACT_ID = 2 } } })
    assert.equal("select[0]=ID&select[1]=TITLE", core.query { select = { "ID", "TITLE" } })
    assert.equal("", core.query {})
  end)

  it("percent-encodes names and values once", function()
    assert.equal("filter[%3EID]=5&q=a%26b%3Dc%20d%2F%25%C3%A9",
      core.query { q = "a&b=c d/%é", filter = { [">ID"] = 5 } })
  end)

  it("passes $result references through untouched", function()
    assert.equal("fields[CONTACT_ID]=$result[a][0][CONTACT_ID]&id=$result[lead][ID]",
      core.query { id = "$result[lead][ID]", fields = { CONTACT_ID = "$result[a][0][CONTACT_ID]" } })
    -- Only a whole, plain reference is special; anything else is a value.
    assert.equal("x=%24result%5Ba%5D%20%26y%3D1", core.query { x = "$result[a] &y=1" })
  end)

  it("writes numbers and booleans the way PHP reads them", function()
    assert.equal("a=1&b=1.5&c=1099511627776&d=1&e=0&f=-3", core.query { a = 1, b = 1.5, c = 2^40, d = true, e = false, f = -3 })
  end)

  it("refuses keys PHP would read as another name, naming the key", function()
    -- PHP's parse_str decodes %5B before it looks for brackets, so
    -- "fields[TITLE]" as one key and fields = { TITLE = ... } would both
    -- arrive as fields[TITLE], one silently overwriting the other.
    assert.has_error(function() core.query { ["fields[TITLE]"] = 1, fields = { TITLE = 2 } } end,
      'cannot encode the key "fields[TITLE]" (PHP reads brackets in a name as nesting) at the top level')
    assert.has_error(function() core.query { fields = { ["A]"] = 1 } } end,
      'cannot encode the key "A]" (PHP reads brackets in a name as nesting) at fields')
    -- At the top level PHP turns "." and " " into "_": "a.b" would be a_b.
    assert.has_error(function() core.query { ["a.b"] = 1, a_b = 2 } end,
      'cannot encode the key "a.b" (PHP reads a dot or a space in a top-level name as "_") at the top level')
    assert.has_error(function() core.query { [" id"] = 1 } end,
      'cannot encode the key " id" (PHP reads a dot or a space in a top-level name as "_") at the top level')
    -- Below the top level PHP keeps them.
    assert.equal("filter[a.b%20c]=1", core.query { filter = { ["a.b c"] = 1 } })
  end)

  it("raises naming the key for what cannot be encoded", function()
    assert.has_error(function() core.query { fields = { x = print } } end, "cannot encode function at fields[x]")
    assert.has_error(function() core.query { n = 0 / 0 } end, "cannot encode a NaN or infinite number at n")
    local cyclic = {}
    cyclic.self = cyclic
    assert.has_error(function() core.query { c = cyclic } end)
  end)
end)

describe("client:batch", function()
  local portal, client
  support.use_portal({ client = true }, function(p, c) portal, client = p, c end)

  local function requests() return #portal:requests() end

  it("runs several commands in one request and keeps each result apart", function()
    local results, err = client:batch {
      one = { ITEMS_GET, { id = 1 } },
      empty = { ITEMS_GET, { id = 2 } },
      fields = { "crm.lead.contact.fields" },
    }
    assert.is_nil(err)
    assert.equal(1, requests())
    assert.equal(1010, results.one.result[1].CONTACT_ID)
    assert.same({}, results.empty.result)
    assert.equal("integer", results.fields.result.SORT.type)
    assert.is_nil(results.one.error)
    assert.is_number(results.one.time.start)
  end)

  it("returns a failing command's error beside the good ones", function()
    local results = assert(client:batch {
      good = { ITEMS_GET, { id = 1 } },
      denied = { ITEMS_GET, { id = 13 } },
      also_good = { ITEMS_GET, { id = 3 } },
    })
    assert.equal(2, #results.good.result)
    assert.is_nil(results.denied.result)
    assert.equal("ACCESS_DENIED", results.denied.error.code)
    assert.equal(ITEMS_GET, results.denied.error.method)
    assert.matches("ACCESS_DENIED", tostring(results.denied.error))
    assert.is_table(results.also_good.result)
  end)

  it("stops at the first failing command with opts.halt", function()
    local results = assert(client:batch({
      a1 = { ITEMS_GET, { id = 1 } },
      a2 = { ITEMS_GET, { id = 13 } },
      a3 = { ITEMS_GET, { id = 3 } },
    }, { halt = true }))
    assert.is_table(results.a1)
    assert.equal("ACCESS_DENIED", results.a2.error.code)
    assert.is_nil(results.a3)
  end)

  it("treats add of a bound contact as a success with false", function()
    local results = assert(client:batch {
      again = { "crm.lead.contact.add", { id = 1, fields = { CONTACT_ID = 1010 } } },
      gone = { "crm.lead.contact.delete", { id = 2, fields = { CONTACT_ID = 1010 } } },
    })
    assert.is_false(results.again.result)
    assert.is_nil(results.again.error)
    assert.is_false(results.gone.result)
  end)

  it("passes a $result reference to the server, after the command it names", function()
    -- "copy" sorts before "source": the reference must reorder them.
    local results = assert(client:batch {
      copy = { "crm.lead.contact.add", { id = 2, fields = {
        CONTACT_ID = "$result[source][0][CONTACT_ID]", IS_PRIMARY = true } } },
      source = { ITEMS_GET, { id = 1 } },
    })
    assert.is_true(results.copy.result)
    local rows = assert(client:call(ITEMS_GET, { id = 2 }))
    assert.same({ { CONTACT_ID = 1010, SORT = 10, ROLE_ID = 0, IS_PRIMARY = "Y" } }, rows)
    local calls = portal:requests()[1].calls
    assert.equal("source", calls[1].key)
    assert.equal("copy", calls[2].key)
  end)

  it("sends IS_PRIMARY = true as Y, PHP-style keys encoded once", function()
    assert(client:batch { add = { "crm.lead.contact.add",
      { id = 2, fields = { CONTACT_ID = 1011, SORT = 5, IS_PRIMARY = true } } } })
    local rows = assert(client:call(ITEMS_GET, { id = 2 }))
    assert.same({ { CONTACT_ID = 1011, SORT = 5, ROLE_ID = 0, IS_PRIMARY = "Y" } }, rows)
  end)

  local function many(n)
    local commands = {}
    for i = 1, n do commands["c" .. i] = { ITEMS_GET, { id = i } } end
    return commands
  end

  for _, case in ipairs { { 50, 1 }, { 51, 2 }, { 101, 3 } } do
    it("sends " .. case[1] .. " commands in " .. case[2] .. " request(s)", function()
      local results = assert(client:batch(many(case[1])))
      local n = 0
      for key, item in pairs(results) do
        n = n + 1
        assert.are_not.equal("ERROR_BATCH_LENGTH_EXCEEDED", item.error and item.error.code, key)
      end
      assert.equal(case[1], n)
      assert.equal(case[2], requests())
      for _, r in ipairs(portal:requests()) do
        assert.is_true(#r.calls <= 50)
      end
      assert.same({ 1010, 1011 }, { results.c1.result[1].CONTACT_ID, results.c1.result[2].CONTACT_ID })
      assert.equal("ACCESS_DENIED", results.c13.error.code)
    end)
  end

  it("reports progress over the requests", function()
    local seen = {}
    assert(client:batch(many(101), { progress = function(done, total) seen[#seen + 1] = done .. "/" .. total end }))
    assert.same({ "50/101", "100/101", "101/101" }, seen)
  end)

  it("keeps what earlier requests returned when a later one fails", function()
    portal:fault { method = "batch", kind = "html502", times = 1 }
    local results, err = client:batch(many(3))
    assert.is_nil(results)
    assert.equal("BAD_RESPONSE", err.code)
    assert.same({}, err.partial)
  end)

  it("reads answers whose maps are [] or arrays keyed 0..n", function()
    for _, case in ipairs {
      { "fb24-batch-cmd-key-0-array-shaped.json", { "0" } },
      { "fb24-batch-all-errors-list-shaped.json", { "0", "1" } },
      { "fb24-batch-one-error.json", { "0" } },
      { "fb24-batch-crm-list-empty-result.json", { "order0000000000" } },
      { "fb24-batch-catalog-document-element-list-last-page.json", { "cmd0000000000" } },
      { "fb24-batch-crm-lead-get-mixed-success-errors-trimmed.json", { "0", "1", "35943" } },
    } do
      local body = support.read_file(REAL .. case[1])
      local ref = support.reference_json(body).object.result.object
      portal:fault { method = "batch", kind = "canned", status = 200, body = body, times = 1 }
      local commands = {}
      for _, key in ipairs(case[2]) do commands[key] = { "crm.lead.get", { id = 1 } } end
      local results = assert(client:batch(commands))
      local function entry(map, key)
        if map.array then return tonumber(key) and map.array[tonumber(key) + 1] end
        return map.object and map.object[key]
      end
      for _, key in ipairs(case[2]) do
        local want_result, want_error = entry(ref.result, key), entry(ref.result_error, key)
        if want_result ~= nil then
          assert.is_nil(support.diff(results[key].result, want_result), case[1] .. " " .. key)
        end
        if want_error ~= nil then
          assert.equal(want_error.object.error, results[key].error.code, case[1] .. " " .. key)
        else
          assert.is_nil(results[key] and results[key].error, case[1] .. " " .. key)
        end
        if want_result == nil and want_error == nil then assert.is_nil(results[key]) end
      end
    end
  end)

  it("fails with BAD_RESPONSE naming the commands the answer left out", function()
    portal:fault { method = "batch", kind = "canned", status = 200, times = 1,
      body = '{"result":{"result":{},"result_error":[]}}' }
    local results, err = client:batch(many(3))
    assert.is_nil(results)
    assert.equal("BAD_RESPONSE", err.code)
    assert.matches("c1, c2, c3", err.description, 1, true)
    assert.same({ "c1", "c2", "c3" }, err.missing)
    portal:fault { method = "batch", kind = "canned", status = 200, times = 1,
      body = '{"result":{"result":{"c1":[]},"result_error":{"c3":{"error":"X","error_description":"x"}}}}' }
    results, err = client:batch(many(3))
    assert.is_nil(results)
    assert.equal("BAD_RESPONSE", err.code)
    assert.same({ "c2" }, err.missing)
    assert.same({}, err.partial.c1.result)
    assert.equal("X", err.partial.c3.error.code)
  end)

  it("returns nil, err when the whole request fails", function()
    portal:fault { method = "batch", kind = "error500" }
    local results, err = client:batch(many(2))
    assert.is_nil(results)
    assert.equal("INTERNAL_SERVER_ERROR", err.code)
    assert.equal(500, err.status)
  end)

  describe("bad input", function()
    after_each(function() assert.equal(0, requests(), "a request was sent for bad input") end)

    local function raises(pattern, f)
      local ok, msg = pcall(f)
      assert.is_false(ok)
      assert.matches(pattern, tostring(msg))
    end

    it("raises naming the command, and sends nothing", function()
      raises("commands must be a non%-empty table", function() client:batch({}) end)
      raises("commands must be a non%-empty table", function() client:batch("x") end)
      raises("command keys must be strings", function() client:batch { { ITEMS_GET, { id = 1 } } } end)
      raises("command keys must be strings", function() client:batch { ["a b"] = { ITEMS_GET, { id = 1 } } } end)
      raises("commands%.a must be a table", function() client:batch { a = ITEMS_GET } end)
      raises("method must be", function() client:batch { a = { "crm/x", {} } } end)
      raises("a batch cannot contain a batch", function() client:batch { a = { "batch", {} } } end)
      raises("params%.id must be a positive integer", function() client:batch { ok = { ITEMS_GET, { id = 1 } },
        bad = { ITEMS_GET, { id = -1 } } } end)
      raises("params%.fields%.IS_PRIMARY must be", function() client:batch { a = { "crm.lead.contact.add",
        { id = 1, fields = { CONTACT_ID = 5, IS_PRIMARY = "yes" } } } } end)
      raises("params must be a table", function() client:batch { a = { ITEMS_GET, 5 } } end)
      raises("cannot encode function at f", function() client:batch { a = { "crm.lead.list", { f = print } } } end)
      raises("refers to %$result%[nope%], which is not a command", function()
        client:batch { a = { ITEMS_GET, { id = "$result[nope][ID]" } } } end)
      raises("refer to each other", function() client:batch {
        a = { ITEMS_GET, { id = "$result[b][ID]" } }, b = { ITEMS_GET, { id = "$result[a][ID]" } } } end)
      raises("opts%.progress must be a function", function()
        client:batch({ a = { ITEMS_GET, { id = 1 } } }, { progress = 1 }) end)
    end)
  end)
end)

describe("client:lead_contacts", function()
  local portal, client
  support.use_portal({ client = true }, function(p, c) portal, client = p, c end)

  it("fetches 120 leads' contacts in 3 HTTP requests", function()
    local ids = {}
    for i = 1, 120 do ids[i] = i end
    local rows, errs = client:lead_contacts(ids)
    assert.equal(3, #portal:requests())
    assert.same({ 1010, 1011 }, { rows[1][1].CONTACT_ID, rows[1][2].CONTACT_ID })
    assert.same({}, rows[2])
    local n = 0
    for _ in pairs(rows) do n = n + 1 end
    assert.equal(119, n)
    -- One lead the user may not read does not fail the others.
    assert.is_nil(rows[13])
    assert.equal("ACCESS_DENIED", errs[13].code)
    -- Each lead's rows are what a single call returns.
    for _, id in ipairs { 3, 57, 101, 120 } do
      assert.same(assert(client:call(ITEMS_GET, { id = id })), rows[id])
    end
  end)

  it("keys the answer by the ids as given, and asks once per lead", function()
    local rows = assert(client:lead_contacts { "1", 1, "2" })
    assert.equal(2, #rows["1"])
    assert.equal(1, #portal:requests())
    assert.equal(2, #portal:requests()[1].calls)
  end)

  it("reports progress and returns what it got before a failure", function()
    local ids = {}
    for i = 1, 60 do ids[i] = i end
    local seen = {}
    portal:fault { method = "batch", kind = "error500", times = 1 }
    local rows, err = client:lead_contacts(ids, { progress = function(d, t) seen[#seen + 1] = d .. "/" .. t end })
    assert.is_nil(rows)
    assert.equal("INTERNAL_SERVER_ERROR", err.code)
    assert.same({ rows = {}, errors = {} }, err.partial)
    portal:reset()
    rows = assert(client:lead_contacts(ids, { progress = function(d, t) seen[#seen + 1] = d .. "/" .. t end }))
    assert.same({ "50/60", "60/60" }, seen)
  end)

  it("fails with BAD_RESPONSE when the answer leaves leads out", function()
    portal:fault { method = "batch", kind = "canned", status = 200, times = 1,
      body = '{"result":{"result":{"2":[]},"result_error":[]}}' }
    local rows, err = client:lead_contacts { 1, 2, 3 }
    assert.is_nil(rows)
    assert.equal("BAD_RESPONSE", err.code)
    assert.matches("1, 3", err.description, 1, true)
    assert.same({ rows = { [2] = {} }, errors = {} }, err.partial)
  end)

  it("raises for ids that are not positive integers, and sends nothing", function()
    assert.has_error(function() client:lead_contacts { 1, 0 } end, nil)
    local ok, msg = pcall(client.lead_contacts, client, { 1, "x" })
    assert.is_false(ok)
    assert.matches("ids%[2%] must be a positive integer", msg)
    ok, msg = pcall(client.lead_contacts, client, 5)
    assert.matches("ids must be an array", msg)
    ok, msg = pcall(client.lead_contacts, client, { 1, 2, [5] = 3 })
    assert.is_false(ok)
    assert.equal(0, #portal:requests())
    local rows, errs = client:lead_contacts {}
    assert.same({}, rows)
    assert.same({}, errs)
  end)
end)
