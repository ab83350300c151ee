-- The fake portal as a target for exports, over real HTTP: generated leads
-- (the `leads` option), leads deleted and added while an export runs
-- (portal:leads, portal:churn), and list calls that cost time as on a real
-- portal (latency, call_cost, count_cost_per_1000_rows; FACTS §5, §11).
-- Costs are kept small; timings are checked only as generous bounds.

local support = require "support"
local socket = require "socket"
local json = require "bitrix24.fake.json"

local LIST = "crm.lead.list"

describe("fake portal for exports", function()
  local portal
  -- Each test starts from the 1000 generated leads, no churn, no costs.
  support.use_portal({ leads = 1000 }, function(p) portal = p end)

  local function call(method, body)
    local status, data, seconds = support.post_json(portal.webhook_url .. method, body)
    assert.equal(200, status, method)
    return data, seconds
  end

  local function page_ids(rows)
    local ids = {}
    for i, row in ipairs(rows) do ids[i] = tonumber(row.ID) end
    return ids
  end

  -- Every lead id through the count-free >ID walk, one page per request.
  local function walk(after)
    local ids, last = {}, after or 0
    while true do
      local d = call(LIST, { order = { ID = "ASC" }, filter = { [">ID"] = last }, start = -1, select = { "ID" } })
      for _, id in ipairs(page_ids(d.result)) do ids[#ids + 1] = id end
      if #d.result < 50 then return ids end
      last = ids[#ids]
    end
  end

  local function assert_ascending(ids)
    for i = 2, #ids do
      assert.is_true(ids[i] > ids[i - 1], "ids not strictly ascending at " .. i)
    end
  end

  local function slice(t, a, b)
    local out = {}
    for i = a, b do out[#out + 1] = t[i] end
    return out
  end

  -- A batch `cmd` that keeps its order: key, command, key, command, ...
  local function commands(...)
    local cmd = json.omap()
    for i = 1, select("#", ...), 2 do json.set(cmd, (select(i, ...)), (select(i + 1, ...))) end
    return cmd
  end

  local function count(t, v)
    local n = 0
    for _, x in ipairs(t) do if x == v then n = n + 1 end end
    return n
  end

  describe("generated leads", function()
    it("has N leads, ids ascending with gaps, the same ids for the same N and a prefix for a smaller N", function()
      local ids = walk()
      assert.equal(1000, #ids)
      assert_ascending(ids)
      local gaps = 0
      for i = 2, #ids do if ids[i] > ids[i - 1] + 1 then gaps = gaps + 1 end end
      assert.is_true(gaps > 100 and gaps < 500, "gaps: " .. gaps)
      assert.equal(1000, call(LIST, { start = 0 }).total)

      -- This interpreter makes the same ids as the nginx that serves them.
      local here = require("bitrix24.fake.portal").new { leads = 1000, code = "c" }
      local res = here:handle { method = "POST", path = "/rest/1/c/crm.lead.list", query = "start=-1&order[ID]=DESC",
        headers = {}, body = "" }
      assert.equal(tostring(ids[1000]), json.decode(res.body).result[1].ID)

      portal:reset { leads = 1000 }
      assert.same(ids, walk())
      portal:reset { leads = 300 }
      assert.same(slice(ids, 1, 300), walk())
      portal:reset() -- the start's count again
      assert.equal(1000, #walk())
    end)

    it("gives the leads fields and contacts", function()
      local id
      for _, v in ipairs(walk()) do
        if v % 10 ~= 0 and v > 2 then id = v break end
      end
      local row = call(LIST, { filter = { ID = id }, select = { "ID", "TITLE", "NAME" } }).result[1]
      assert.equal("Lead #" .. id, row.TITLE)
      assert.is_string(row.NAME)
      local contacts = call("crm.lead.contact.items.get", { id = id }).result
      assert.is_true(#contacts >= 1 and #contacts <= 3, "contacts: " .. #contacts)
      -- A change sticks to the generated lead.
      assert.is_true(call("crm.lead.contact.items.delete", { id = id }).result)
      assert.same({}, call("crm.lead.contact.items.get", { id = id }).result)
    end)

    it("starts with 100,000 leads and regenerates them within a generous bound", function()
      local t0 = socket.gettime()
      local big = support.start_portal { tls = false, leads = 100000, rate = 1000, burst = 100000 }
      finally(function() big:stop() end)
      local started = socket.gettime() - t0
      local status, d = support.post_json(big.webhook_url .. LIST, { start = 0, select = { "ID" } })
      assert.equal(200, status)
      assert.equal(100000, d.total)
      assert.equal(50, d.next)
      local _, last = support.post_json(big.webhook_url .. LIST,
        { order = { ID = "DESC" }, start = -1, select = { "ID" } })
      assert.is_true(tonumber(last.result[1].ID) > 100000, "no gaps in 100,000 ids")
      t0 = socket.gettime()
      big:reset { leads = 100000 }
      local reset = socket.gettime() - t0
      assert.is_true(started < 5, "start took " .. started .. " s")
      assert.is_true(reset < 3, "reset took " .. reset .. " s")
    end)
  end)

  describe("crm.lead.list for exports", function()
    local ids
    before_each(function() ids = walk() end)

    it("filters by >=ID, <ID, >ID, <=ID and counts the matching rows", function()
      local d = call(LIST, { filter = { [">=ID"] = ids[10], ["<ID"] = ids[20] }, start = 0, select = { "ID" } })
      assert.same(slice(ids, 10, 19), page_ids(d.result))
      assert.equal(10, d.total)
      assert.is_nil(d.next)
      d = call(LIST, { filter = { [">ID"] = ids[10], ["<=ID"] = ids[20] }, start = 0, select = { "ID" } })
      assert.same(slice(ids, 11, 20), page_ids(d.result))
      -- Bounds between two ids.
      d = call(LIST, { filter = { [">ID"] = ids[10] + 0.5, ["<ID"] = ids[12] + 0.5 }, select = { "ID" } })
      assert.same(slice(ids, 11, 12), page_ids(d.result))
    end)

    it("orders by ID descending and pages with start and next", function()
      local d = call(LIST, { order = { ID = "DESC" }, filter = { ["<ID"] = ids[100] }, start = 0, select = { "ID" } })
      assert.equal(99, d.total)
      assert.equal(50, d.next)
      assert.equal(ids[99], page_ids(d.result)[1])
      assert.equal(ids[50], page_ids(d.result)[50])
      d = call(LIST, { order = { ID = "DESC" }, filter = { ["<ID"] = ids[100] }, start = 50, select = { "ID" } })
      assert.same({ ids[49], ids[1] }, { page_ids(d.result)[1], page_ids(d.result)[49] })
      assert.is_nil(d.next)
    end)

    it("start=-1 answers up to 50 rows without total or next; select picks the fields", function()
      local d = call(LIST, { order = { ID = "ASC" }, filter = { [">ID"] = ids[900] }, start = -1,
        select = { "ID", "TITLE" } })
      assert.equal(50, #d.result)
      assert.equal(0, d.total)
      assert.is_nil(d.next)
      assert.same({ ID = tostring(ids[901]), TITLE = "Lead #" .. ids[901] }, d.result[1])
    end)

    it("the same rows when the filter also names another field (the general path)", function()
      local fast = call(LIST, { filter = { [">ID"] = ids[500] }, start = 0, select = { "ID", "NAME" } })
      local name = fast.result[1].NAME
      local general = call(LIST, { filter = { [">ID"] = ids[500], NAME = name }, start = 0, select = { "ID", "NAME" } })
      local want = {}
      for i = 501, 1000 do
        local row = call(LIST, { filter = { ID = ids[i] }, select = { "NAME" } }).result[1]
        if row.NAME == name then want[#want + 1] = ids[i] end
        if #want == 50 then break end
      end
      assert.same(want, page_ids(general.result))
    end)

    it("an array under >ID (a reference to row 49 of a short page) matches rows already returned", function()
      local d = call("batch", { cmd = commands(
        "short", "crm.lead.list?order[ID]=ASC&start=-1&select[]=ID&filter[%3E%3DID]=" .. ids[990],
        "chain", "crm.lead.list?order[ID]=ASC&start=-1&select[]=ID&filter[%3EID]=$result[short][49][ID]",
        "none", "crm.lead.list?order[ID]=ASC&start=-1&select[]=ID&filter[%3EID]=" .. ids[1000],
        "empty", "crm.lead.list?order[ID]=ASC&start=-1&select[]=ID&filter[%3EID]=$result[none][49][ID]") })
      assert.same(slice(ids, 990, 1000), page_ids(d.result.result.short))
      -- The page of rows became the value: ID > 1 (intval of a row), so the
      -- chain starts again near the first lead.
      local want = {}
      for _, id in ipairs(ids) do
        if id > 1 and #want < 50 then want[#want + 1] = id end
      end
      assert.same(want, page_ids(d.result.result.chain))
      assert.same({}, d.result.result.none)
      assert.same({}, d.result.result.empty) -- an empty array matches nothing
    end)
  end)

  describe("churn", function()
    it("deletes and appends leads at once; a count-free walk sees each remaining lead once", function()
      local ids = walk()
      local first = call(LIST, { order = { ID = "ASC" }, filter = { [">ID"] = 0 }, start = -1, select = { "ID" } })
      local seen = page_ids(first.result)
      local res = portal:leads { delete = { ids[60], ids[2], 999999999 }, append = 3 }
      assert.same({ ids[60], ids[2] }, res.deleted_now)
      assert.equal(3, #res.appended_now)
      assert.is_true(res.appended_now[1] > ids[1000])
      assert.equal(1001, res.count)
      assert.equal(res.appended_now[3], res.last_id)
      for _, id in ipairs(walk(seen[50])) do seen[#seen + 1] = id end
      assert_ascending(seen)
      assert.equal(1002, #seen) -- ids[2] came in the first page, before it went; ids[60] never
      assert.equal(1, count(seen, ids[2]))
      assert.equal(0, count(seen, ids[60]))
      assert.same(res.appended_now, slice(seen, 1000, 1002))
      assert.equal(1001, call(LIST, { start = 0 }).total)
    end)

    it("a rule changes the leads after every K list calls, between the sub-calls of a batch too", function()
      local ids = walk()
      local rule = portal:churn { every = 3, delete = { ids[200] }, delete_count = 1, append = 2, times = 2 }
      assert.equal(0, rule.list_calls)
      local cmd, prev = json.omap(), nil
      for i = 1, 7 do
        local filter = prev and ("$result[" .. prev .. "][49][ID]") or "0"
        json.set(cmd, "p" .. i, "crm.lead.list?order[ID]=ASC&start=-1&select[]=ID&filter[%3EID]=" .. filter)
        prev = "p" .. i
      end
      local pages = call("batch", { cmd = cmd }).result.result
      local got = {}
      for i = 1, 7 do
        for _, id in ipairs(page_ids(pages["p" .. i])) do got[#got + 1] = id end
      end
      assert_ascending(got)
      -- After p3 the first change: ids[200], ahead of the walk, is gone from p4.
      assert.equal(0, count(got, ids[200]))
      assert.equal(1, count(got, ids[201]))

      local report = portal:churn {}
      assert.equal(6, report.list_calls) -- the rule ended after its second change
      assert.equal(3, #report.deleted) -- ids[200] once, one pick each time
      assert.equal(ids[200], report.deleted[1])
      assert.equal(4, #report.appended)
      assert.equal(1000 - 3 + 4, report.count)
      local after = walk()
      assert.equal(1001, #after)
      for _, id in ipairs(report.deleted) do assert.equal(0, count(after, id)) end
      for _, id in ipairs(report.appended) do assert.equal(1, count(after, id)) end
    end)

    it("refuses a bad rule or change with 400", function()
      local status = support.post_json(portal.url .. "/_fake/churn", { every = 0 })
      assert.equal(400, status)
      status = support.post_json(portal.url .. "/_fake/leads", { delete = "x" })
      assert.equal(400, status)
    end)
  end)

  describe("costs", function()
    it("a counted call costs count_cost_per_1000_rows per 1000 rows; start=-1 does not; operating shows it", function()
      portal:configure { count_cost_per_1000_rows = 0.2 }
      local d, seconds = call(LIST, { start = 0, select = { "ID" } })
      assert.is_true(d.time.processing >= 0.2, "processing " .. d.time.processing)
      assert.is_true(seconds >= 0.2, "answered in " .. seconds)
      local counted_op = d.time.operating
      assert.is_true(counted_op >= 0.2)
      d = call(LIST, { start = -1, select = { "ID" } })
      assert.is_true(d.time.processing < 0.1, "an uncounted call was charged " .. d.time.processing)
      assert.is_true(d.time.operating > counted_op and d.time.operating < counted_op + 0.1)

      -- The cost grows with the table.
      portal:reset { leads = 3000 }
      portal:configure { count_cost_per_1000_rows = 0.2 }
      d = call(LIST, { start = 0, select = { "ID" } })
      assert.is_true(d.time.processing >= 0.6, "processing " .. d.time.processing)
    end)

    it("each sub-call of a batch costs call_cost, charged to its own method, the batch itself to none", function()
      portal:configure { call_cost = 0.05 }
      local cmd = {}
      for i = 1, 4 do cmd["l" .. i] = "crm.lead.list?start=-1&select[]=ID" end
      for i = 1, 2 do cmd["c" .. i] = "crm.contact.list?start=-1&select[]=ID" end
      local d, seconds = call("batch", { cmd = cmd })
      local times = d.result.result_time
      for k in pairs(cmd) do
        assert.is_true(times[k].processing >= 0.05, k .. " processing " .. times[k].processing)
      end
      assert.is_true(d.time.processing >= 0.3, "batch processing " .. d.time.processing)
      assert.is_true(seconds >= 0.3, "answered in " .. seconds)
      -- Each sub-call was charged to its own method: 4 lead lists, 2 contact lists.
      local per_call = times.l1.processing
      assert.is_true(math.abs(times.l4.operating - 4 * per_call) < 1e-3, "lead operating " .. times.l4.operating)
      assert.is_true(math.abs(times.c2.operating - 2 * per_call) < 1e-3, "contact operating " .. times.c2.operating)
      local one = call(LIST, { start = -1, select = { "ID" } })
      assert.is_true(math.abs(one.time.operating - 5 * per_call) < 1e-3, "operating " .. one.time.operating)
    end)

    it("latency delays every answer; a waiting answer does not hold up the others", function()
      portal:configure { latency = 0.3 }
      local _, seconds = call(LIST, { start = -1 })
      assert.is_true(seconds >= 0.29, "answered in " .. seconds)
      portal:configure { latency = 0, count_cost_per_1000_rows = 2 } -- a counted call takes 2 s
      local slow = assert(socket.connect("127.0.0.1", portal.port))
      finally(function() slow:close() end)
      local body = '{"start":0}'
      local path = portal.webhook_url:match("^http://[^/]+(/.*)$") .. LIST
      local t0 = socket.gettime()
      assert(slow:send("POST " .. path .. " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        .. "Content-Length: " .. #body .. "\r\nConnection: close\r\n\r\n" .. body))
      socket.sleep(0.1) -- the slow call has started
      local _, quick = call(LIST, { start = -1 })
      assert.is_true(quick < 1, "a count-free call waited " .. quick .. " s behind a counted one")
      slow:settimeout(10)
      local status_line = slow:receive("*l")
      assert.equal("HTTP/1.1 200 OK", status_line)
      assert.is_true(socket.gettime() - t0 >= 1.98, "the counted call did not wait")
    end)
  end)
end)

describe("b24-fake-portal export options", function()
  it("takes --leads, --latency, --call-cost and --count-cost-per-1000-rows", function()
    local out_file = os.tmpname()
    finally(function() os.remove(out_file) end)
    local sh_pid = tonumber((support.run("bin/b24-fake-portal --no-tls --leads 300 --latency 0.1 --call-cost 0.05 "
      .. "--count-cost-per-1000-rows 1 --timeout 30 >" .. out_file .. " 2>&1 </dev/null & echo $!"):match("%d+")))
    finally(function() os.execute("kill -TERM " .. sh_pid .. " 2>/dev/null") end)
    local out, deadline = "", socket.gettime() + 5
    while not out:find("\npid %d+\n") and socket.gettime() < deadline do
      socket.sleep(0.05)
      out = support.read_file(out_file)
    end
    local url = assert(out:match("^(%S+)\n"), out)
    local status, d, seconds = support.post_json(url .. LIST, { start = 0, select = { "ID" } })
    assert.equal(200, status)
    assert.equal(300, d.total)
    -- 0.3 s of count, 0.05 s of call, and 0.1 s of latency on the wire.
    assert.is_true(d.time.processing >= 0.35, "processing " .. d.time.processing)
    -- (nginx's timers may fire a few milliseconds early by the client's clock)
    assert.is_true(seconds >= 0.44, "answered in " .. seconds)
  end)
end)
