-- Server rules the fake portal follows, seen over real HTTP: how batch
-- resolves $result[...] references (FACTS.md §6, §11 [src]), the time block
-- (processing never above duration), `start` of list methods (§10 [src]) and
-- the https_only option (§1, §4). Requests are sent with luasocket, HTTPS ones
-- with the curl CLI.

local fake = require "bitrix24.fake.server"
local support = require "support"
local json = require "bitrix24.fake.json" -- keeps integers and key order

local portal

-- POST to a webhook method. `body`: a table goes as JSON, a string as a form.
local function hook(method, body)
  return support.send(portal.webhook_url .. method, body or "")
end

-- A batch of commands given as alternating key/command arguments, in order.
local function batch(...)
  local r = hook("batch", { halt = 0, cmd = support.ordered(...) })
  assert.equal(200, r.status, r.body)
  return r.data.result
end

-- The parameters the portal's sub-call `key` of the last batch received.
local function sub_params(key)
  local log = portal:requests()
  for _, c in ipairs(log[#log].calls) do
    if c.key == key then return c.params end
  end
  error("no sub-call " .. key)
end

local quote = support.quote

-- One curl call: status, body.
local function curl(args)
  local p = assert(io.popen("curl -sS --max-time 5 -w '\\n%{http_code}' " .. args .. " 2>&1"))
  local out = p:read("*a")
  p:close()
  local body, status = out:match("^(.*)\n(%d+)$")
  assert(body, "unexpected curl output: " .. out)
  return tonumber(status), body
end

describe("fake portal server rules over HTTP", function()
  support.use_portal(nil, function(p) portal = p end)

  describe("batch references", function()
    it("are resolved after the command query is decoded: percent-encoded references work", function()
      -- What qs.stringify and http_build_query send: brackets and "$" encoded.
      local res = batch(
        "first", "crm.lead.contact.items.get?id=1",
        "bind", "crm.lead.contact.add?id=2&fields%5BCONTACT_ID%5D=%24result%5Bfirst%5D%5B1%5D%5BCONTACT_ID%5D")
      assert.is_true(res.result.bind)
      assert.same({ "first", "bind" }, (json.keys(res.result)))
      assert.equal(1011, sub_params("bind").fields.CONTACT_ID)
      local items = hook("crm.lead.contact.items.get", { id = 2 }).data.result
      assert.equal(1, #items)
      assert.equal(1011, items[1].CONTACT_ID)
    end)

    it("work in a form-encoded batch, where the command is encoded twice", function()
      -- cmd[bind]=<urlencode("crm.lead.contact.add?id=2&" .. urlencode-ed pairs)>
      local r = hook("batch", "halt=0&cmd[first]=crm.lead.contact.items.get%3Fid%3D1" ..
        "&cmd[bind]=crm.lead.contact.add%3Fid%3D2%26fields%255BCONTACT_ID%255D%3D" ..
        "%2524result%255Bfirst%255D%255B0%255D%255BCONTACT_ID%255D")
      assert.equal(200, r.status, r.body)
      assert.is_true(r.data.result.result.bind)
      assert.equal(1010, sub_params("bind").fields.CONTACT_ID)
    end)

    it("a whole-value reference takes the value as it is: an array stays an array", function()
      -- items=$result[g]: lead 2 gets the bindings lead 1 has.
      local res = batch(
        "g", "crm.lead.contact.items.get?id=1",
        "set", "crm.lead.contact.items.set?id=2&items=$result[g]")
      assert.is_true(res.result.set)
      local items = sub_params("set").items
      assert.equal(2, #items)
      assert.equal(1010, items[1].CONTACT_ID)
      assert.equal("Y", items[1].IS_PRIMARY)
      local got = hook("crm.lead.contact.items.get", { id = 2 }).data.result
      assert.same({ 1010, 1011 }, { got[1].CONTACT_ID, got[2].CONTACT_ID })
      assert.same({ "Y", "N" }, { got[1].IS_PRIMARY, got[2].IS_PRIMARY })
    end)

    it("the path walk stops at the first missing key and keeps the value reached", function()
      batch(
        "one", "crm.lead.list?filter[%3E%3DID]=1000&select[]=ID",
        "row", "crm.lead.contact.fields?x=$result[one][0][NOPE][deeper]",
        -- FACTS §11: a chain asking for row 49 of a short page gets the whole page.
        "chain", "crm.lead.list?filter[%3EID]=$result[one][49][ID]&select[]=ID",
        "str", "crm.lead.contact.fields?x=$result[one][0][ID][2]")
      assert.same({ ID = "1000" }, sub_params("row").x)
      assert.same({ { ID = "1000" } }, sub_params("chain").filter[">ID"])
      -- A string can be indexed too (PHP string offsets): "1000"[2] is "0".
      assert.equal("0", sub_params("str").x)
    end)

    it("inside a longer string only a string or a number is put in; otherwise the text stays", function()
      batch(
        "first", "crm.lead.contact.items.get?id=1",
        "list", "crm.lead.list?filter[%3E%3DID]=1000&select[]=ID",
        "s", "crm.lead.contact.fields?a=lead+$result[list][0][ID]+ok&b=sort:$result[first][1][SORT]" ..
          "&c=rows:$result[list]&d=x$result[list][0][ID]-up-to-a-blank+y&e=$result[list][0][ID]+$result[first][0][SORT]")
      local p = sub_params("s")
      assert.equal("lead 1000 ok", p.a)
      assert.equal("sort:20", p.b)           -- a number, written as text
      assert.equal("rows:$result[list]", p.c) -- an array: left as it was
      -- The reference runs up to the next blank, and all of it is replaced.
      assert.equal("x1000 y", p.d)
      assert.equal("1000 10", p.e)
    end)

    it("a command that has not run (failed, later, unknown) is never substituted inside text", function()
      local res = batch(
        "first", "crm.lead.contact.items.get?id=1",
        "bad", "crm.lead.contact.items.get?id=0",
        "s", "crm.lead.contact.fields?a=x+$result[bad][0][CONTACT_ID]&b=x+$result[later][0]" ..
          "&c=x+$result[nobody][0][ID]&d=$result[later]",
        "later", "crm.lead.contact.fields")
      assert.equal("", res.result_error.bad.error)
      local p = sub_params("s")
      assert.equal("x $result[bad][0][CONTACT_ID]", p.a)
      assert.equal("x $result[later][0]", p.b)
      assert.equal("x $result[nobody][0][ID]", p.c)
      -- As a whole value, the walk stops at the first step, at the map of
      -- results so far: the parameter becomes that map (FACTS §11 [src]).
      assert.same({ "first" }, (json.keys(p.d)))
      assert.equal(1010, p.d.first[1].CONTACT_ID)
    end)

    it("$next, $total, $time and $error are resolved the same way", function()
      batch(
        "page", "crm.lead.list?select[]=ID",
        "bad", "crm.lead.contact.items.get?id=13",
        "s", "crm.lead.contact.fields?n=$next[page]&t=$total[page]&ts=at+$time[page][start]" ..
          "&tb=$time[page]&e=$error[bad][error]&ed=why:+$error[bad][error_description]&eb=$error[bad]")
      local p = sub_params("s")
      assert.equal(50, p.n)
      assert.equal(246, p.t) -- the readable leads of the default data
      assert.matches("^at %d+%.?%d*$", p.ts)
      assert.is_number(p.tb.start)
      assert.is_number(p.tb.processing)
      assert.equal("ACCESS_DENIED", p.e)
      assert.equal("why: Access denied!", p.ed)
      assert.same({ error = "ACCESS_DENIED", error_description = "Access denied!" }, p.eb)
    end)

    it("a non-string command is skipped but counts towards the 50", function()
      local body = { '{"halt":0,"cmd":{"skip":1' }
      for i = 1, 50 do body[#body + 1] = ',"k' .. i .. '":"crm.lead.contact.fields"' end
      body[#body + 1] = "}}"
      local r = hook("batch", json.decode(table.concat(body)))
      assert.equal(200, r.status)
      local res = r.data.result
      assert.is_nil(res.result.skip)
      assert.is_nil(res.result_error.skip)
      assert.is_table(res.result.k49)
      assert.equal("ERROR_BATCH_LENGTH_EXCEEDED", res.result_error.k50.error)
    end)
  end)

  describe("time block", function()
    it("processing is never greater than duration, in single calls and batches", function()
      portal:configure { op_cost = 0.01 }
      local blocks = {}
      for i = 1, 60 do
        local r = hook("crm.lead.contact.items.get", { id = i })
        if r.data.time then blocks[#blocks + 1] = r.data.time end
        if i % 6 == 0 then
          local cmd = json.omap()
          for k = 1, 7 do json.set(cmd, "c" .. k, "crm.lead.contact.items.get?id=" .. (i + k)) end
          local b = hook("batch", { cmd = cmd })
          blocks[#blocks + 1] = b.data.time
          for _, t in pairs(b.data.result.result_time) do blocks[#blocks + 1] = t end
        end
      end
      assert.is_true(#blocks > 100)
      for _, t in ipairs(blocks) do
        assert.is_true(t.processing <= t.duration,
          ("processing %.17g > duration %.17g"):format(t.processing, t.duration))
        assert.is_true(math.abs(t.duration - (t.finish - t.start)) < 1e-6)
      end
    end)
  end)

  describe("list start", function()
    it("is read with intval and picks the page it falls in", function()
      local function first_id(start)
        local r = hook("crm.lead.list", { start = start, select = { "ID" } })
        assert.equal(200, r.status, r.body)
        return r.data.result[1].ID, r.data.next, #r.data.result
      end
      local id50, next50 = first_id(50)
      assert.equal(100, next50)
      for _, start in ipairs({ 70, 99, "70", "99abc", 70.9 }) do
        local id, nxt, n = first_id(start)
        assert.equal(id50, id, tostring(start))
        assert.equal(100, nxt, tostring(start))
        assert.equal(50, n, tostring(start))
      end
      local id0 = first_id(0)
      assert.equal(id0, (first_id(49)))
      assert.equal(id0, (first_id("abc")))
      assert.equal("1", id0)
    end)
  end)
end)

describe("fake portal https_only", function()
  it("answers plain http with 400 INVALID_REQUEST Https required., and serves HTTPS", function()
    local p = fake.start { https_only = true, rate = 1000, burst = 100000, timeout = 120 }
    finally(function() p:stop() end)
    -- The recorded answer of a real portal (spec/fixtures/real-responses/).
    local f = assert(io.open(support.REAL_RESPONSES .. "/issue-error-v2-webhook-https-required.json", "rb"))
    local recorded = f:read("*a"):gsub("%s+$", "")
    f:close()
    local status, body = curl(quote(p.webhook_url .. "crm.lead.contact.items.get?id=1"))
    assert.equal(400, status)
    assert.equal(recorded, body)
    -- A wrong code and the OAuth route get the same: the scheme is checked first.
    status, body = curl(quote(p.url .. "/rest/1/wrong/crm.lead.contact.items.get?id=1"))
    assert.equal(400, status)
    assert.equal(recorded, body)
    status = curl(quote(p.oauth_endpoint .. "crm.lead.contact.items.get?id=1&auth=" .. p.access_token))
    assert.equal(400, status)
    status, body = curl("--cacert " .. quote(p.ca_file) .. " " ..
      quote(p.https_webhook_url .. "crm.lead.contact.items.get?id=1"))
    assert.equal(200, status)
    assert.equal(1010, json.decode(body).result[1].CONTACT_ID)
    local log = p:requests()
    assert.equal(4, #log)
    assert.equal("INVALID_REQUEST", log[1].error)
    assert.equal(200, log[4].status)
  end)

  it("is refused without TLS, naming the option", function()
    local ok, err = pcall(fake.start, { https_only = true, tls = false })
    assert.is_false(ok)
    assert.matches("https_only", err)
  end)
end)
