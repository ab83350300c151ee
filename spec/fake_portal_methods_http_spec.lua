-- The fake portal's method behaviours (crm.lead.contact.*, crm.*.list,
-- batch, errors, time block, limits, OAuth routes) seen over real HTTP:
-- one nginx-hosted portal, requests sent with luasocket. The expected
-- behaviour is FACTS.md §2-§7 and §10, as in fake_portal_logic_spec.lua.

local support = require "support"
local json = require "bitrix24.fake.json" -- keeps integers and key order
local default_data = require "bitrix24.fake.data"
local socket = require "socket"

local JSON_TYPE = "application/json"
local FORM_TYPE = "application/x-www-form-urlencoded"
local OWNER_INVALID = '{"error":"","error_description":"The parameter ownerEntityID is invalid or not defined."}'
local ACCESS_DENIED = '{"error":"ACCESS_DENIED","error_description":"Access denied!"}'
local NOT_FOUND = '{"error":"","error_description":"Not found."}'
local CHANGE_METHODS = { "crm.lead.contact.add", "crm.lead.contact.delete", "crm.lead.contact.items.set",
  "crm.lead.contact.items.delete" }

local portal

local send = support.send

-- A webhook call: /rest/1/<code>/<method>.
local function hook(method, body, o)
  return send(portal.webhook_url .. method, body, o)
end

-- An OAuth call: /rest/<method>.
local function oauth(method, body, o)
  return send(portal.oauth_endpoint .. method, body, o)
end

-- Bindings of a lead as { {CONTACT_ID, SORT, IS_PRIMARY}, ... } in answer order.
local function contacts_of(id)
  local r = hook("crm.lead.contact.items.get", { id = id })
  assert.equal(200, r.status, r.body)
  local out = {}
  for i, b in ipairs(r.data.result) do out[i] = { b.CONTACT_ID, b.SORT, b.IS_PRIMARY } end
  return out
end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

local readable_ids = support.readable_ids
local cmds = support.ordered   -- an ordered cmd map from alternating key/command arguments

local function batch(cmd, extra)
  local body = json.omap()
  for k, v in pairs(extra or {}) do json.set(body, k, v) end
  json.set(body, "cmd", cmd)
  return hook("batch", body)
end

describe("fake portal methods over HTTP", function()
  -- Each test: data, log, faults, bucket, operating time and limits back to the start.
  support.use_portal(nil, function(p) portal = p end)

  describe("crm.lead.contact.*", function()
    it("fields: SORT, IS_PRIMARY, CONTACT_ID with the documented attributes", function()
      local r = hook("crm.lead.contact.fields")
      assert.equal(200, r.status)
      assert.matches("^application/json", r.headers["content-type"])
      local f = r.data.result
      assert.same({ "SORT", "IS_PRIMARY", "CONTACT_ID" }, (json.keys(f)))
      local want = { SORT = { "integer", false, "Sorting" }, IS_PRIMARY = { "char", false, "Primary" },
        CONTACT_ID = { "integer", true, "Contact" } }
      for name, w in pairs(want) do
        assert.same({ "type", "isRequired", "isReadOnly", "isImmutable", "isMultiple", "isDynamic", "title" },
          (json.keys(f[name])))
        assert.equal(w[1], f[name].type)
        assert.equal(w[2], f[name].isRequired)
        assert.equal(w[3], f[name].title)
        assert.is_false(f[name].isReadOnly)
        assert.is_false(f[name].isMultiple)
      end
      assert.is_nil(r.data.total)
      assert.is_nil(r.data.next)
    end)

    it("items.get: integer fields and Y/N strings ordered by SORT, no total/next", function()
      local r = hook("crm.lead.contact.items.get", { id = 1 })
      assert.equal(200, r.status)
      assert.matches('^{"result":%[{"CONTACT_ID":1010,"SORT":10,"ROLE_ID":0,"IS_PRIMARY":"Y"},'
        .. '{"CONTACT_ID":1011,"SORT":20,"ROLE_ID":0,"IS_PRIMARY":"N"}%],"time":{', r.body)
      assert.is_nil(r.data.total)
      assert.is_nil(r.data.next)
      -- A binding with a lower SORT comes first whatever the insertion order.
      assert.equal(200, hook("crm.lead.contact.add", { id = 1, fields = { CONTACT_ID = 1020, SORT = 15 } }).status)
      assert.equal(200, hook("crm.lead.contact.add", { id = 1, fields = { CONTACT_ID = 1021, SORT = 5 } }).status)
      assert.same({ { 1021, 5, "N" }, { 1010, 10, "Y" }, { 1020, 15, "N" }, { 1011, 20, "N" } }, contacts_of(1))
    end)

    it("items.get: a lead without contacts gives the JSON array []", function()
      local r = hook("crm.lead.contact.items.get", { id = 2 })
      assert.equal(200, r.status)
      assert.matches('^{"result":%[%],"time":{', r.body)
      assert.equal(0, #r.data.result)
    end)

    it("add: default SORT 10 and IS_PRIMARY N; already bound is 200 false", function()
      local r = hook("crm.lead.contact.add", { id = 2, fields = { CONTACT_ID = 1005 } })
      assert.equal(200, r.status)
      assert.matches('^{"result":true,"time":{', r.body)
      assert.same({ { 1005, 10, "N" } }, contacts_of(2))
      r = hook("crm.lead.contact.add", { id = 2, fields = { CONTACT_ID = 1005, SORT = 99 } })
      assert.equal(200, r.status)
      assert.matches('^{"result":false,"time":{', r.body)
      assert.same({ { 1005, 10, "N" } }, contacts_of(2)) -- unchanged
    end)

    it("add: IS_PRIMARY true (a JSON boolean) is stored as N; only \"Y\" makes a primary", function()
      local r = hook("crm.lead.contact.add", { id = 1, fields = { CONTACT_ID = 1020, SORT = 30, IS_PRIMARY = true } })
      assert.equal(200, r.status)
      assert.is_true(r.data.result)
      assert.same({ { 1010, 10, "Y" }, { 1011, 20, "N" }, { 1020, 30, "N" } }, contacts_of(1))
      hook("crm.lead.contact.add", { id = 1, fields = { CONTACT_ID = 1021, SORT = 40, IS_PRIMARY = "Y" } })
      assert.same({ { 1010, 10, "N" }, { 1011, 20, "N" }, { 1020, 30, "N" }, { 1021, 40, "Y" } }, contacts_of(1))
    end)

    it("add/delete/items.set: a lead that does not exist is 400 with error \"\" and Not found.", function()
      for _, m in ipairs({ "crm.lead.contact.add", "crm.lead.contact.delete", "crm.lead.contact.items.set" }) do
        local r = hook(m, { id = 99, fields = { CONTACT_ID = 1001 }, items = { { CONTACT_ID = 1001 } } })
        assert.equal(400, r.status, m)
        assert.equal(NOT_FOUND, r.body, m)
      end
    end)

    it("delete: true when bound, 200 false when not", function()
      local r = hook("crm.lead.contact.delete", { id = 1, fields = { CONTACT_ID = 1011 } })
      assert.equal(200, r.status)
      assert.is_true(r.data.result)
      assert.same({ { 1010, 10, "Y" } }, contacts_of(1))
      r = hook("crm.lead.contact.delete", { id = 1, fields = { CONTACT_ID = 1011 } })
      assert.equal(200, r.status)
      assert.matches('^{"result":false,"time":{', r.body)
      r = hook("crm.lead.contact.delete", { id = 2, fields = { CONTACT_ID = 1010 } })
      assert.equal(200, r.status)
      assert.is_false(r.data.result)
    end)

    it("items.set: first Y stays primary, missing SORT is (index+1)*10, bad CONTACT_IDs skipped", function()
      local r = hook("crm.lead.contact.items.set", { id = 1, items = {
        { CONTACT_ID = 1030, IS_PRIMARY = "N" },               -- index 0: SORT 10
        { CONTACT_ID = 0, IS_PRIMARY = "Y" },                  -- skipped
        { SORT = 5, IS_PRIMARY = "Y" },                        -- no CONTACT_ID: skipped
        { CONTACT_ID = -4, IS_PRIMARY = "Y" },                 -- skipped
        { CONTACT_ID = 1031, IS_PRIMARY = "Y", SORT = 100 },   -- the first Y
        { CONTACT_ID = 1032, IS_PRIMARY = "Y" },               -- index 5: SORT 60, demoted
      } })
      assert.equal(200, r.status)
      assert.matches('^{"result":true,"time":{', r.body)
      assert.same({ { 1030, 10, "N" }, { 1032, 60, "N" }, { 1031, 100, "Y" } }, contacts_of(1))
    end)

    it("items.set: with no item marked, the first item (not the lowest SORT) becomes primary", function()
      local r = hook("crm.lead.contact.items.set", { id = 2, items = {
        { CONTACT_ID = 1040 }, { CONTACT_ID = 1041, SORT = 5 }, { CONTACT_ID = 1042, IS_PRIMARY = true } } })
      assert.equal(200, r.status)
      assert.is_true(r.data.result)
      assert.same({ { 1041, 5, "N" }, { 1040, 10, "Y" }, { 1042, 30, "N" } }, contacts_of(2))
    end)

    it("items.delete: true, and the lead has no contacts left", function()
      local r = hook("crm.lead.contact.items.delete", { id = 1 })
      assert.equal(200, r.status)
      assert.matches('^{"result":true,"time":{', r.body)
      assert.same({}, contacts_of(1))
    end)

    it("id missing, 0 or -1: 400 with error \"\" and the ownerEntityID text, for every method", function()
      local methods = { "crm.lead.contact.items.get", "crm.lead.contact.add", "crm.lead.contact.delete",
        "crm.lead.contact.items.set", "crm.lead.contact.items.delete" }
      for _, m in ipairs(methods) do
        for _, id in ipairs({ false, 0, -1 }) do
          local body = { fields = { CONTACT_ID = 1010 }, items = { { CONTACT_ID = 1010 } } }
          if id then body.id = id end
          local r = hook(m, body)
          assert.equal(400, r.status, m .. " id=" .. tostring(id))
          assert.equal(OWNER_INVALID, r.body, m .. " id=" .. tostring(id))
        end
      end
      assert.same({ { 1010, 10, "Y" }, { 1011, 20, "N" } }, contacts_of(1))
    end)

    it("lead 13 (no read right): 403 ACCESS_DENIED for reading and changing", function()
      local r = hook("crm.lead.contact.items.get", { id = 13 })
      assert.equal(403, r.status)
      assert.equal(ACCESS_DENIED, r.body)
      for _, m in ipairs(CHANGE_METHODS) do
        r = hook(m, { id = 13, fields = { CONTACT_ID = 1001 }, items = { { CONTACT_ID = 1001 } } })
        assert.equal(403, r.status, m)
        assert.equal(ACCESS_DENIED, r.body, m)
      end
    end)

    it("lead 14 (read only): items.get works, every change is 403 ACCESS_DENIED and changes nothing", function()
      local want
      for _, lead in ipairs(default_data().leads) do
        if lead.ID == 14 then
          want = {}
          for i, b in ipairs(lead.contacts) do want[i] = { b.CONTACT_ID, b.SORT, b.IS_PRIMARY } end
        end
      end
      assert.is_true(#want > 0)
      assert.same(want, contacts_of(14))
      for _, m in ipairs(CHANGE_METHODS) do
        local r = hook(m, { id = 14, fields = { CONTACT_ID = 1001 }, items = { { CONTACT_ID = 1001 } } })
        assert.equal(403, r.status, m)
        assert.equal(ACCESS_DENIED, r.body, m)
      end
      assert.same(want, contacts_of(14))
    end)
  end)

  describe("parameters", function()
    it("reads a form body with PHP-style keys", function()
      local r = hook("crm.lead.contact.add", "id=2&fields[CONTACT_ID]=1010")
      assert.equal(200, r.status, r.body)
      assert.is_true(r.data.result)
      r = hook("crm.lead.contact.add", "id=2&fields%5BCONTACT_ID%5D=1011&fields%5BSORT%5D=30&fields[IS_PRIMARY]=Y")
      assert.equal(200, r.status, r.body)
      assert.same({ { 1010, 10, "N" }, { 1011, 30, "Y" } }, contacts_of(2))
      local log = portal:requests()
      assert.equal("webhook", log[1].auth)
      assert.equal("1010", log[1].params.fields.CONTACT_ID) -- form values are strings
      r = hook("crm.lead.contact.items.set", "id=2&items[0][CONTACT_ID]=1040&items[1][CONTACT_ID]=1041&items[1][SORT]=5")
      assert.equal(200, r.status, r.body)
      assert.same({ { 1041, 5, "N" }, { 1040, 10, "Y" } }, contacts_of(2))
    end)

    it("reads query-string parameters, with and without a body", function()
      local r = hook("crm.lead.contact.items.get", nil, { query = "id=1" })
      assert.equal(200, r.status)
      assert.equal(2, #r.data.result)
      r = hook("crm.lead.contact.items.get", nil, { query = "id=1", method = "GET" })
      assert.equal(200, r.status)
      assert.equal(2, #r.data.result)
      r = hook("crm.lead.contact.add", nil, { query = "id=2&fields%5BCONTACT_ID%5D=1007&fields%5BSORT%5D=70" })
      assert.equal(200, r.status, r.body)
      assert.same({ { 1007, 70, "N" } }, contacts_of(2))
      -- Keys the body lacks still come from the query.
      r = hook("crm.lead.contact.add", { fields = { CONTACT_ID = 1008 } }, { query = "id=2" })
      assert.equal(200, r.status, r.body)
      assert.same({ { 1008, 10, "N" }, { 1007, 70, "N" } }, contacts_of(2))
    end)

    it("lets body keys override query keys (JSON and form bodies)", function()
      local r = hook("crm.lead.contact.items.get", { id = 1 }, { query = "id=2" })
      assert.equal(200, r.status)
      assert.equal(2, #r.data.result)
      r = hook("crm.lead.contact.items.get", "id=2", { query = "id=1" })
      assert.equal(200, r.status)
      assert.matches('^{"result":%[%],', r.body)
      r = hook("crm.lead.contact.items.get", { id = 0 }, { query = "id=1" })
      assert.equal(400, r.status)
      assert.equal(OWNER_INVALID, r.body)
    end)

    it("reads an invalid JSON body as empty", function()
      local r = hook("crm.lead.contact.items.get", '{"id":1', { ctype = JSON_TYPE })
      assert.equal(400, r.status)
      assert.equal(OWNER_INVALID, r.body)
      -- ... so the query is all there is.
      r = hook("crm.lead.contact.items.get", "{id:1}", { ctype = JSON_TYPE, query = "id=2" })
      assert.equal(200, r.status)
      assert.matches('^{"result":%[%],', r.body)
    end)

    it("takes method names in any case, with or without .json", function()
      for _, name in ipairs({ "CRM.Lead.Contact.Items.Get", "crm.lead.contact.items.get.json",
        "CRM.LEAD.CONTACT.ITEMS.GET.JSON" }) do
        local r = hook(name, { ID = 1 })
        assert.equal(200, r.status, name)
        assert.equal(1010, r.data.result[1].CONTACT_ID, name)
      end
      for _, e in ipairs(portal:requests()) do assert.equal("crm.lead.contact.items.get", e.method) end
    end)
  end)

  describe("list methods", function()
    -- Follows `next` from start=0; returns the ids in order and the pages.
    local function all_pages(method)
      local ids, pages, start = {}, {}, 0
      while start do
        local r = hook(method, { start = start, select = { "ID" } })
        assert.equal(200, r.status, r.body)
        pages[#pages + 1] = r.data
        for _, row in ipairs(r.data.result) do
          assert.is_string(row.ID)
          ids[#ids + 1] = row.ID
        end
        assert.is_true(#pages < 20, "next never ends")
        start = r.data.next
      end
      return ids, pages
    end

    it("crm.lead.list: 50-row pages with total and next, ids as strings", function()
      local r = hook("crm.lead.list", {})
      assert.equal(200, r.status)
      assert.equal(50, #r.data.result)
      assert.matches('"next":50,"total":246,"time":{', r.body)
      assert.equal("1", r.data.result[1].ID)
      assert.same({ "ID", "TITLE", "NAME", "LAST_NAME", "STATUS_ID" }, (json.keys(r.data.result[1])))
      assert.equal("Lead #1", r.data.result[1].TITLE)
    end)

    it("crm.lead.list: following start=next collects every readable lead once", function()
      local want = readable_ids("leads")
      assert.equal(246, #want) -- 247 leads minus lead 13
      local ids, pages = all_pages("crm.lead.list")
      assert.same(want, ids)
      assert.equal(5, #pages)
      for i, p in ipairs(pages) do
        assert.equal(246, p.total)
        if i < #pages then
          assert.equal(50, #p.result)
          assert.equal(i * 50, p.next)
        else
          assert.equal(46, #p.result)
          assert.is_nil(p.next)
        end
      end
    end)

    it("crm.contact.list: the same paging over the readable contacts", function()
      local want = readable_ids("contacts")
      assert.equal(299, #want) -- contact 1300 is unreadable
      local ids, pages = all_pages("crm.contact.list")
      assert.same(want, ids)
      assert.equal(6, #pages)
      assert.equal(299, pages[1].total)
      assert.equal(49, #pages[6].result)
      assert.is_nil(pages[6].next)
      local r = hook("crm.contact.list", { filter = { [">ID"] = 1290 } })
      assert.equal(9, r.data.total)
      assert.same({ "ID", "NAME", "LAST_NAME" }, (json.keys(r.data.result[1])))
    end)

    it("start=-1: up to 50 rows, total 0 and no next", function()
      local r = hook("crm.lead.list", { start = -1, order = { ID = "ASC" }, filter = { [">ID"] = 100 } })
      assert.equal(200, r.status)
      assert.equal(50, #r.data.result)
      assert.equal("101", r.data.result[1].ID)
      assert.equal(0, r.data.total)
      assert.is_nil(r.data.next)
      assert.matches('^{"result":%[.*%],"total":0,"time":{', r.body)
      assert.is_nil(r.body:find('"next"', 1, true))
    end)

    it("the >ID walk with order ID ASC and start=-1 reaches every lead once", function()
      local ids, last, rounds = {}, 0, 0
      while true do
        local r = hook("crm.lead.list", { order = { ID = "ASC" }, filter = { [">ID"] = last }, start = -1,
          select = { "ID" } })
        assert.equal(200, r.status, r.body)
        rounds = rounds + 1
        for _, row in ipairs(r.data.result) do
          assert.is_string(row.ID)
          assert.is_true(tonumber(row.ID) > last)
          ids[#ids + 1] = row.ID
        end
        if #r.data.result < 50 then break end
        last = tonumber(r.data.result[#r.data.result].ID)
        assert.is_true(rounds < 20)
      end
      assert.same(readable_ids("leads"), ids)
      assert.equal(5, rounds)
      local r = hook("crm.lead.list", { order = { ID = "DESC" }, filter = { [">ID"] = 299 }, select = { "ID" } })
      assert.same({ { ID = "1000" }, { ID = "305" }, { ID = "300" } }, r.data.result)
      assert.equal(3, r.data.total)
    end)
  end)

  describe("batch", function()
    it("runs several commands and answers the documented shape, [] for empty maps", function()
      local r = batch(cmds(
        "add", "crm.lead.contact.add?id=2&fields[CONTACT_ID]=1050",
        "get", "crm.lead.contact.items.get?id=2",
        "list", "crm.lead.list?filter[%3E%3DID]=1000&select[]=ID"), { halt = 0 })
      assert.equal(200, r.status, r.body)
      local res = r.data.result
      assert.same({ "result", "result_error", "result_total", "result_next", "result_time" }, (json.keys(res)))
      assert.same({ "add", "get", "list" }, (json.keys(res.result)))
      assert.is_true(res.result.add)
      assert.same({ { CONTACT_ID = 1050, SORT = 10, ROLE_ID = 0, IS_PRIMARY = "N" } }, res.result.get)
      assert.same({ { ID = "1000" } }, res.result.list)
      assert.equal(1, res.result_total.list)
      assert.same({ "list" }, (json.keys(res.result_total)))
      assert.matches('"result_error":%[%]', r.body)
      assert.matches('"result_next":%[%]', r.body)
      for _, k in ipairs({ "add", "get", "list" }) do
        assert.is_number(res.result_time[k].start)
        assert.is_number(res.result_time[k].operating)
      end
      assert.is_table(r.data.time)
      local calls = portal:requests()[1].calls
      assert.equal(3, #calls)
      assert.equal("crm.lead.contact.items.get", calls[2].method)
    end)

    it("halt=1 stops at the first failing command; later ones are absent", function()
      local r = batch(cmds(
        "a", "crm.lead.contact.items.get?id=1",
        "b", "crm.lead.contact.items.get?id=0",
        "c", "crm.lead.contact.add?id=2&fields[CONTACT_ID]=1060"), { halt = 1 })
      assert.equal(200, r.status)
      local res = r.data.result
      assert.same({ "a" }, (json.keys(res.result)))
      assert.same({ "b" }, (json.keys(res.result_error)))
      assert.equal("", res.result_error.b.error)
      assert.equal("The parameter ownerEntityID is invalid or not defined.", res.result_error.b.error_description)
      assert.same({ "a" }, (json.keys(res.result_time)))
      assert.is_nil(r.body:find('"c"', 1, true))
      assert.same({}, contacts_of(2)) -- c did not run
    end)

    it("halt=0 runs every command", function()
      local r = batch(cmds(
        "a", "crm.lead.contact.items.get?id=1",
        "b", "crm.lead.contact.items.get?id=0",
        "c", "crm.lead.contact.add?id=2&fields[CONTACT_ID]=1060"), { halt = 0 })
      assert.equal(200, r.status)
      local res = r.data.result
      assert.same({ "a", "c" }, (json.keys(res.result)))
      assert.same({ "b" }, (json.keys(res.result_error)))
      assert.is_true(res.result.c)
      assert.same({ { 1060, 10, "N" } }, contacts_of(2))
    end)

    it("substitutes $result[key][0][CONTACT_ID]", function()
      local r = batch(cmds(
        "first", "crm.lead.contact.items.get?id=1",
        "bind", "crm.lead.contact.add?id=2&fields[CONTACT_ID]=$result[first][0][CONTACT_ID]&fields[SORT]=40"))
      assert.equal(200, r.status)
      assert.is_true(r.data.result.result.bind)
      assert.matches('"result_error":%[%]', r.body)
      assert.same({ { 1010, 40, "N" } }, contacts_of(2))
      -- The whole value is the reference: the sub-call gets the number itself.
      assert.equal(1010, portal:requests()[1].calls[2].params.fields.CONTACT_ID)
    end)

    it("gives the 51st command ERROR_BATCH_LENGTH_EXCEEDED", function()
      local cmd = json.omap()
      for i = 1, 51 do json.set(cmd, "k" .. i, "crm.lead.contact.items.get?id=2") end
      local r = batch(cmd)
      assert.equal(200, r.status)
      local res = r.data.result
      assert.equal(50, count(res.result))
      assert.is_nil(res.result.k51)
      assert.same({ "k51" }, (json.keys(res.result_error)))
      assert.equal("ERROR_BATCH_LENGTH_EXCEEDED", res.result_error.k51.error)
      assert.is_table(res.result.k50)
      local calls = portal:requests()[1].calls
      assert.equal(51, #calls)
      assert.is_nil(calls[50].error)
      assert.equal("ERROR_BATCH_LENGTH_EXCEEDED", calls[51].error)
    end)

    it("refuses a nested batch with ERROR_BATCH_METHOD_NOT_ALLOWED", function()
      local r = batch(cmds("inner", "batch?cmd[x]=crm.lead.contact.fields", "ok", "crm.lead.contact.fields"))
      assert.equal(200, r.status)
      local res = r.data.result
      assert.equal("ERROR_BATCH_METHOD_NOT_ALLOWED", res.result_error.inner.error)
      assert.is_string(res.result_error.inner.error_description)
      assert.is_nil(res.result.inner)
      assert.is_table(res.result.ok)
    end)

    it("answers arrays for command keys 0, 1", function()
      -- A JSON array of commands ...
      local r = hook("batch", '{"cmd":["crm.lead.contact.items.get?id=2","crm.lead.contact.items.get?id=1"]}',
        { ctype = JSON_TYPE })
      assert.equal(200, r.status)
      assert.matches('^{"result":{"result":%[%[%],%[{"CONTACT_ID":1010,', r.body)
      assert.matches('"result_time":%[{"start":', r.body)
      -- ... and an object with keys "0", "1".
      r = hook("batch", '{"cmd":{"0":"crm.lead.contact.items.get?id=2","1":"crm.lead.contact.items.get?id=1"}}',
        { ctype = JSON_TYPE })
      assert.matches('^{"result":{"result":%[%[%],%[{"CONTACT_ID":1010,', r.body)
      -- Only key 1 failing: result [ ... ] but result_error {"1": ...}.
      r = hook("batch", '{"cmd":{"0":"crm.lead.contact.items.get?id=2","1":"crm.lead.contact.items.get?id=13"}}',
        { ctype = JSON_TYPE })
      assert.matches('^{"result":{"result":%[%[%]%],"result_error":{"1":{"error":"ACCESS_DENIED"', r.body)
    end)

    it("counts once for the leaky bucket", function()
      portal:configure { rate = 0.001, burst = 2 }
      local cmd = json.omap()
      for i = 1, 10 do json.set(cmd, "c" .. i, "crm.lead.contact.fields") end
      local r = batch(cmd)
      assert.equal(200, r.status)
      assert.equal(10, count(r.data.result.result))
      assert.equal(200, hook("crm.lead.contact.fields").status) -- the bucket still admits one
      r = hook("crm.lead.contact.fields")
      assert.equal(503, r.status)
      assert.equal('{"error":"QUERY_LIMIT_EXCEEDED","error_description":"Too many requests"}', r.body)
    end)
  end)

  describe("envelopes", function()
    it("an unknown method is 404 ERROR_METHOD_NOT_FOUND", function()
      local want = '{"error":"ERROR_METHOD_NOT_FOUND","error_description":"Method not found!"}'
      local r = hook("crm.lead.contact.foo", { id = 1 })
      assert.equal(404, r.status)
      assert.equal(want, r.body)
      r = oauth("crm.deal.list", { auth = portal.access_token })
      assert.equal(404, r.status)
      assert.equal(want, r.body)
    end)

    it("error bodies have no time block", function()
      for _, r in ipairs({
        hook("crm.lead.contact.items.get", { id = 13 }),
        hook("crm.lead.contact.items.get", {}),
        hook("crm.lead.contact.add", { id = 99, fields = { CONTACT_ID = 1001 } }),
        hook("crm.nope"),
      }) do
        assert.is_true(r.status >= 400)
        assert.is_string(r.data.error)
        assert.is_nil(r.data.time)
        assert.same({ "error", "error_description" }, (json.keys(r.data)))
      end
    end)

    it("success bodies have the full time block", function()
      local before = socket.gettime()
      local r = hook("crm.lead.contact.items.get", { id = 1 })
      assert.equal(200, r.status)
      local t = r.data.time
      assert.same({ "start", "finish", "duration", "processing", "date_start", "date_finish",
        "operating_reset_at", "operating" }, (json.keys(t)))
      for _, k in ipairs({ "start", "finish", "duration", "processing", "operating", "operating_reset_at" }) do
        assert.is_number(t[k], k)
      end
      assert.is_true(math.abs(t.start - before) < 5)
      assert.is_true(t.finish >= t.start)
      assert.is_true(math.abs(t.duration - (t.finish - t.start)) < 1e-6)
      assert.matches('"processing":0%.01,', r.body) -- the default simulated cost
      assert.is_true(math.abs(t.operating - 0.01) < 1e-9)
      -- operating_reset_at is an integer: floor(start) + 600.
      assert.matches('"operating_reset_at":%d+,', r.body)
      assert.equal(math.floor(t.start) + 600, t.operating_reset_at)
      assert.equal(os.date("!%Y-%m-%dT%H:%M:%S+00:00", math.floor(t.start)), t.date_start)
      assert.equal(os.date("!%Y-%m-%dT%H:%M:%S+00:00", math.floor(t.finish)), t.date_finish)
    end)
  end)

  describe("operating-time limit", function()
    it("429 OPERATION_TIME_LIMIT for the method over budget; other methods still work", function()
      local cfg = portal:configure { op_limit = 0.05, op_cost = { ["crm.lead.contact.items.get"] = 0.03 } }
      assert.equal(0.05, cfg.op_limit)
      local r1 = hook("crm.lead.contact.items.get", { id = 1 })
      assert.equal(200, r1.status)
      local r2 = hook("crm.lead.contact.items.get", { id = 1 })
      assert.equal(200, r2.status)
      assert.is_true(math.abs(r1.data.time.operating - 0.03) < 1e-9)
      assert.is_true(math.abs(r2.data.time.operating - 0.06) < 1e-9) -- grows
      assert.is_true(math.abs(r2.data.time.processing - 0.03) < 1e-9)
      local r3 = hook("crm.lead.contact.items.get", { id = 1 })
      assert.equal(429, r3.status)
      assert.equal('{"error":"OPERATION_TIME_LIMIT","error_description":"Method is blocked due to operation time limit."}',
        r3.body)
      local other = hook("crm.lead.contact.fields")
      assert.equal(200, other.status)
      assert.is_true(math.abs(other.data.time.operating - 0.01) < 1e-9)
      -- Batch sub-calls are charged to (and blocked for) their own method.
      local b = batch(cmds("get", "crm.lead.contact.items.get?id=1", "fields", "crm.lead.contact.fields"))
      assert.equal(200, b.status)
      assert.equal("OPERATION_TIME_LIMIT", b.data.result.result_error.get.error)
      assert.is_table(b.data.result.result.fields)
      -- reset() lifts it.
      portal:reset()
      assert.equal(200, hook("crm.lead.contact.items.get", { id = 1 }).status)
    end)
  end)

  describe("OAuth routes", function()
    it("/rest/<method> with auth in the JSON body runs the method", function()
      local r = oauth("crm.lead.contact.add", { id = 2, fields = { CONTACT_ID = 1009 }, auth = portal.access_token })
      assert.equal(200, r.status, r.body)
      assert.is_true(r.data.result)
      r = oauth("crm.lead.contact.items.get", { id = 2, auth = portal.access_token })
      assert.equal(200, r.status)
      assert.same({ { CONTACT_ID = 1009, SORT = 10, ROLE_ID = 0, IS_PRIMARY = "N" } }, r.data.result)
      local log = portal:requests()
      assert.equal("oauth", log[1].auth)
      assert.equal("crm.lead.contact.add", log[1].method)
    end)

    it("/rest/<method> with auth in the query, params in a form body or the query", function()
      local r = oauth("crm.lead.contact.items.set", "id=2&items[0][CONTACT_ID]=1012",
        { query = "auth=" .. portal.access_token })
      assert.equal(200, r.status, r.body)
      r = oauth("CRM.Lead.Contact.Items.Get.json", nil, { query = "id=2&auth=" .. portal.access_token })
      assert.equal(200, r.status)
      assert.same({ { CONTACT_ID = 1012, SORT = 10, ROLE_ID = 0, IS_PRIMARY = "Y" } }, r.data.result)
      r = oauth("crm.lead.list", nil, { query = "auth=" .. portal.access_token .. "&start=200" })
      assert.equal(200, r.status)
      assert.equal(46, #r.data.result)
      assert.equal(246, r.data.total)
      -- Method errors are the same as through a webhook.
      r = oauth("crm.lead.contact.items.get", { id = 13, auth = portal.access_token })
      assert.equal(403, r.status)
      assert.equal(ACCESS_DENIED, r.body)
    end)

    it("batch with auth given once at the top runs every sub-call", function()
      local r = oauth("batch", { auth = portal.access_token, cmd = {
        a = "crm.lead.contact.items.get?id=1", b = "crm.lead.list?start=-1&select[]=ID" } })
      assert.equal(200, r.status, r.body)
      assert.equal(2, #r.data.result.result.a)
      assert.equal(50, #r.data.result.result.b)
      assert.matches('"result_error":%[%]', r.body)
    end)
  end)
end)
