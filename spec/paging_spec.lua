-- client:each over list methods: following next, and the fast mode for
-- large exports (start = -1 with an ID filter).

local support = require "support"
local fakejson = require "bitrix24.fake.json"

-- A portal data file with 1,000 leads (ids with gaps) and a few contacts.
local function write_data()
  local leads, id = {}, 0
  for i = 1, 1000 do
    id = id + (i % 7 == 0 and 3 or 1)
    leads[i] = { ID = id, TITLE = "Lead " .. id, NAME = "N" .. i, LAST_NAME = "L" .. i, STATUS_ID = "NEW" }
  end
  local contacts = {}
  for i = 1, 10 do contacts[i] = { ID = 5000 + i, NAME = "C" .. i, LAST_NAME = "X" } end
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(fakejson.encode { leads = leads, contacts = contacts })
  f:close()
  return path, leads
end

describe("client:each", function()
  local portal, client, data_path, leads

  support.use_portal(function()
    data_path, leads = write_data()
    return { data = data_path, client = true }
  end, function(p, c) portal, client = p, c end)

  teardown(function()
    if data_path then os.remove(data_path) end
  end)

  local function export(params, opts)
    local ids = {}
    for lead, err in client:each("crm.lead.list", params, opts) do
      assert.is_nil(err)
      ids[#ids + 1] = tonumber(lead.ID)
    end
    return ids
  end

  it("exports 1,000 leads by following next, 50 to a page, one call a request with page_batch = 1", function()
    local ids = export({ select = { "ID", "TITLE" } }, { page_batch = 1 })
    assert.equal(1000, #ids)
    for i, lead in ipairs(leads) do assert.equal(lead.ID, ids[i]) end
    local log = portal:requests()
    assert.equal(20, #log)
    assert.equal(0, tonumber(log[1].params.start or 0))
    assert.equal(950, tonumber(log[20].params.start))
  end)

  it("exports the same 1,000 leads in fast mode, without counting, one call a request with page_batch = 1", function()
    local slow = export { select = { "ID", "TITLE" } }
    portal:reset()
    local fast = export({ select = { "TITLE" } }, { fast = true, page_batch = 1 })
    assert.same(slow, fast)
    local log = portal:requests()
    assert.equal(21, #log)
    for _, r in ipairs(log) do
      assert.equal(-1, tonumber(r.params.start))
      assert.equal("ASC", r.params.order.ID)
    end
    assert.is_nil(log[1].params.filter and log[1].params.filter[">ID"])
    assert.equal(slow[50], tonumber(log[2].params.filter[">ID"]))
  end)

  it("keeps the caller's filter in fast mode", function()
    local ids = export({ filter = { [">ID"] = 1100 } }, { fast = true })
    assert.is_true(#ids > 0)
    for _, id in ipairs(ids) do assert.is_true(id > 1100) end
    local want = 0
    for _, lead in ipairs(leads) do if lead.ID > 1100 then want = want + 1 end end
    assert.equal(want, #ids)
  end)

  it("yields rows as they come, one page in memory", function()
    local first
    for lead in client:each("crm.lead.list", {}) do
      first = lead
      break
    end
    assert.equal(tostring(leads[1].ID), tostring(first.ID))
    assert.equal(1, #portal:requests())
  end)

  it("reports progress with the total", function()
    local seen = {}
    for _ in client:each("crm.lead.list", {}, { progress = function(n, total) seen[#seen + 1] = { n, total } end }) do end
    assert.equal(20, #seen)
    assert.same({ 50, 1000 }, seen[1])
    assert.same({ 1000, 1000 }, seen[20])
  end)

  it("hands a failure to the loop as false, err and then ends", function()
    portal:fault { method = "crm.lead.list", kind = "error500", times = 1 }
    local got = {}
    for lead, err in client:each("crm.lead.list", {}) do
      got[#got + 1] = { lead, err }
    end
    assert.equal(1, #got)
    assert.is_false(got[1][1])
    assert.equal("INTERNAL_SERVER_ERROR", got[1][2].code)
  end)

  it("pages through crm.contact.list too", function()
    local n = 0
    for contact in client:each("crm.contact.list", {}) do
      n = n + 1
      assert.is_string(contact.ID)
    end
    assert.equal(10, n)
  end)

  -- A page of `n` rows with the given next and total, as a canned answer.
  local function page(n, next_, total)
    local rows = {}
    for i = 1, n do rows[i] = string.format('{"ID":"%d"}', i) end
    return string.format('{"result":[%s],"next":%d,"total":%d,"time":{}}', table.concat(rows, ","), next_, total)
  end

  -- Runs the loop for at most `cap` steps: a loop that never ends fails here.
  local function bounded(params, cap)
    local rows, errs, steps = 0, {}, 0
    for row, err in client:each("crm.lead.list", params, { page_batch = 1 }) do
      steps = steps + 1
      if steps > cap then break end
      if row then rows = rows + 1 else errs[#errs + 1] = err end
    end
    return rows, errs, steps
  end

  it("ends with BAD_RESPONSE when next does not advance", function()
    portal:fault { method = "crm.lead.list", kind = "canned", status = 200, body = page(50, 50, 1000) }
    local rows, errs, steps = bounded({}, 1000)
    assert.is_true(steps <= 1000, "the loop did not end")
    assert.equal(50, rows)
    assert.equal(1, #errs)
    assert.equal("BAD_RESPONSE", errs[1].code)
    assert.matches("next", errs[1].description)
    assert.equal(2, #portal:requests())
  end)

  it("ends with BAD_RESPONSE when next goes back", function()
    portal:fault { method = "crm.lead.list", kind = "canned", status = 200, body = page(50, 50, 1000) }
    local rows, errs = bounded({ start = 100 }, 1000)
    assert.equal(0, rows)
    assert.equal("BAD_RESPONSE", errs[1] and errs[1].code)
  end)

  it("ends with BAD_RESPONSE when the rows outnumber total", function()
    portal:fault { method = "crm.lead.list", kind = "canned", status = 200, body = page(50, 50, 20) }
    local rows, errs = bounded({}, 1000)
    assert.equal(0, rows)
    assert.equal(1, #errs)
    assert.equal("BAD_RESPONSE", errs[1].code)
    assert.matches("total", errs[1].description)
  end)

  it("raises for bad arguments, and sends nothing", function()
    assert.has_error(function() client:each("crm/lead", {}) end)
    assert.has_error(function() client:each("crm.lead.list", 5) end)
    assert.has_error(function() client:each("crm.lead.list", {}, 5) end)
    assert.has_error(function() client:each("crm.lead.list", { order = { DATE_CREATE = "DESC" } }, { fast = true }) end)
    assert.has_error(function() client:each("crm.lead.list", { f = print }) end)
    assert.equal(0, #portal:requests())
  end)

  it("raises naming the param each computes with when its type is wrong, and sends nothing", function()
    local function raises(params, opts, message)
      local ok, err = pcall(client.each, client, "crm.lead.list", params, opts)
      assert.is_false(ok)
      assert.equal("bitrix24: each: " .. message, err)
    end
    raises({ order = { ID = 1 } }, { fast = true }, 'params.order.ID must be "ASC" or "DESC", got number')
    raises({ order = "ID" }, { fast = true }, "params.order must be a table, got string")
    raises({ filter = "x" }, { fast = true }, "params.filter must be a table, got string")
    raises({ filter = { [">ID"] = "abc" } }, { fast = true },
      'opts.fast: params.filter[">ID"] must be an id (a number), got "abc"')
    raises({ filter = { ["<ID"] = {} } }, { fast = true },
      'opts.fast: params.filter["<ID"] must be an id (a number), got table')
    raises({ start = "x" }, nil, 'params.start must be a whole number, got "x"')
    raises({ start = 1.5 }, nil, "params.start must be a whole number, got 1.5")
    assert.equal(0, #portal:requests())
    -- What stays allowed: ids as strings, the id order in any case, a start.
    for _ in client:each("crm.lead.list", { order = { ID = "asc" }, filter = { [">ID"] = "3" } }, { fast = true }) do
      break
    end
    for _ in client:each("crm.lead.list", { start = "50" }) do break end
  end)
end)
