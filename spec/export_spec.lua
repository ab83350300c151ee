-- client:each as an export: pages sent as batches of list calls (FACTS §11),
-- counted by the fake portal over real HTTP, with leads deleted and added
-- while it runs, the short-page trap, failures in the middle, and parallel
-- units whose rows still come out in order.

local support = require "support"
local bitrix24 = require "bitrix24"
local Portal = require "bitrix24.fake.portal"

local LIST = "crm.lead.list"

-- The ids the fake generates for n leads, from its generator in this
-- process (not through the client).
local function generated(n)
  return Portal.new({ leads = n, code = "c" }).leads.ids
end

local function set_of(ids)
  local s = {}
  for _, id in ipairs(ids) do s[id] = true end
  return s
end

describe("client:each export", function()
  local portal, client

  setup(function()
    portal = support.start_portal { tls = false, leads = 1000, rate = 1000, burst = 100000 }
    client = bitrix24.webhook(portal.webhook_url, support.opts())
  end)

  teardown(function()
    if client then client:close() end
    if portal then portal:stop() end
  end)

  before_each(function() portal:reset() end)

  -- Runs an export; returns the ids in the order they came, and the errors.
  local function export(opts, params, c)
    local ids, errs = {}, {}
    for row, err in (c or client):each(LIST, params or { select = { "ID" } }, opts) do
      if row then ids[#ids + 1] = tonumber(row.ID) else errs[#errs + 1] = err end
    end
    return ids, errs
  end

  local function requests() return #portal:requests() end

  -- Every list call the portal ran, top-level or inside a batch.
  local function list_calls()
    local calls = {}
    for _, r in ipairs(portal:requests()) do
      if r.method == LIST then calls[#calls + 1] = r.params end
      for _, c in ipairs(r.calls or {}) do
        if c.method == LIST then calls[#calls + 1] = c.params end
      end
    end
    return calls
  end

  local function assert_ascending(ids)
    for i = 2, #ids do
      if ids[i] <= ids[i - 1] then
        error(string.format("ids not strictly ascending at %d: %s after %s", i, ids[i], ids[i - 1]), 2)
      end
    end
  end

  describe("fast mode", function()
    it("exports 10,000 leads in 5 requests, every id once and ascending, without counting", function()
      portal:reset { leads = 10000 }
      local ids, errs = export { fast = true }
      assert.same({}, errs)
      assert.same(generated(10000), ids)
      assert.equal(5, requests()) -- 4 batches of 2,500 rows, and one whose first page is empty
      local calls = list_calls()
      assert.equal(4 * 50 + 50, #calls)
      for _, p in ipairs(calls) do
        assert.equal(-1, tonumber(p.start))
        assert.equal("ASC", p.order.ID)
      end
    end)

    it("chains each call on the previous one's row 49 inside a batch", function()
      portal:reset { leads = 3000 }
      local ids = export { fast = true }
      assert.same(generated(3000), ids)
      local log = portal:requests()
      assert.equal("batch", log[1].method)
      local cmd = log[1].params.cmd
      assert.is_nil(cmd.p0:find("filter", 1, true))
      assert.matches("filter%[%%3EID%]=%$result%[p0%]%[49%]%[ID%]", cmd.p1)
      assert.matches("filter%[%%3EID%]=%$result%[p48%]%[49%]%[ID%]", cmd.p49)
      -- The second batch starts from the last id of the first one.
      assert.matches("filter%[%%3EID%]=" .. ids[2500] .. "&", log[2].params.cmd.p0)
    end)

    it("takes floor(N / 2,500) + 1 or 2 requests when N is a multiple of 50 or of 2,500", function()
      -- leads -> requests: a batch ends full (one more request finds the
      -- end), or the end is a short page inside a batch (one plain call
      -- looks again from the last id).
      for n, want in pairs { [2500] = 2, [5000] = 3, [2450] = 2, [2550] = 3, [2520] = 2, [50] = 2, [49] = 1 } do
        portal:reset { leads = n }
        local ids, errs = export { fast = true }
        assert.same({}, errs)
        assert.same(generated(n), ids, n .. " leads")
        assert.equal(want, requests(), n .. " leads")
      end
    end)

    it("drops what a chain returns after a short page (the short-page trap), then looks again from the last id",
      function()
      portal:reset { leads = 1020 } -- page 21 holds 20 rows; the rest of the chain gets a whole page as its >ID
      local ids, errs = export { fast = true }
      assert.same({}, errs)
      assert.same(generated(1020), ids)
      local log = portal:requests()
      assert.equal(2, #log)
      -- The trap did happen: the call after the short page got an array.
      local p21 = log[1].calls[22].params
      assert.equal("table", type(p21.filter[">ID"]))
      -- and then one plain call from the last id, which came back empty.
      assert.equal(LIST, log[2].method)
      assert.equal(ids[1020], tonumber(log[2].params.filter[">ID"]))
    end)

    it("gives every surviving id once, no id deleted before it was read, and the ids added, "
      .. "when leads are deleted and added during the export", function()
      portal:reset { leads = 4000 }
      local before = generated(4000)
      -- After every 10th list call: delete two leads ahead of the export,
      -- 3 picked anywhere, and add 3; five times (the export makes 80+).
      local ahead = { before[1500], before[1501], before[3990], before[3999] }
      portal:churn { every = 10, delete = ahead, delete_count = 3, append = 3, times = 5 }
      local ids, errs = export { fast = true }
      assert.same({}, errs)
      assert_ascending(ids)
      local report = portal:churn {}
      local got, deleted = set_of(ids), set_of(report.deleted)
      for _, id in ipairs(before) do
        if not deleted[id] then assert.is_true(got[id], "surviving id " .. id .. " missing") end
      end
      for _, id in ipairs(ahead) do assert.is_nil(got[id], "id " .. id .. " deleted before it was read") end
      assert.equal(15, #report.appended)
      for _, id in ipairs(report.appended) do assert.is_true(got[id], "added id " .. id .. " missing") end
      -- The end came as a short page inside the second batch: the trap was
      -- met (an array under >ID) and its rows dropped.
      local trapped = 0
      for _, p in ipairs(list_calls()) do
        if type(p.filter) == "table" and type(p.filter[">ID"]) == "table" then trapped = trapped + 1 end
      end
      assert.is_true(trapped > 0, "the export never met a short page inside a batch")
      assert.is_true(requests() <= 3, requests() .. " requests")
    end)

    -- A canned batch answer: page p0 holds `first`, every later page `rest`.
    local function canned(first, rest)
      local pages = { '"p0":' .. first }
      for i = 1, 49 do pages[#pages + 1] = '"p' .. i .. '":' .. rest end
      return '{"result":{"result":{' .. table.concat(pages, ",")
        .. '},"result_error":[],"result_total":[],"result_next":[],"result_time":[]},"time":{}}'
    end

    local function rows_json(ids, from, to, wrap)
      local rows = {}
      for i = from, to do rows[#rows + 1] = '{"ID":"' .. ids[i] .. '"}' end
      local array = "[" .. table.concat(rows, ",") .. "]"
      return wrap and '{"' .. wrap .. '":' .. array .. "}" or array
    end

    it("drops a chained page that does not continue the one before it, and goes on from the last good id", function()
      local all = generated(1000)
      -- Every chained page repeats the first one (as after the trap).
      portal:fault { method = "batch", kind = "canned", times = 1,
        body = canned(rows_json(all, 1, 50), rows_json(all, 1, 50)) }
      local ids, errs = export { fast = true }
      assert.same({}, errs)
      assert.same(all, ids)
      assert.matches("filter%[%%3EID%]=" .. all[50] .. "&", portal:requests()[2].params.cmd.p0)
    end)

    it("follows rows a list method answers inside a map ({ tasks = [...] }) with the map's key", function()
      local all = generated(1000)
      portal:fault { method = "batch", kind = "canned", times = 1,
        body = canned(rows_json(all, 1, 50, "tasks"), rows_json(all, 1, 50, "tasks")) }
      local ids, errs = export { fast = true }
      assert.same({}, errs)
      assert.same(all, ids)
      assert.matches("%$result%[p0%]%[tasks%]%[49%]%[ID%]", portal:requests()[2].params.cmd.p1)
    end)

    it("ends with BAD_RESPONSE when the first page of a request breaks the id order", function()
      portal:fault { method = "batch", kind = "canned", times = 1,
        body = canned('[{"ID":"5"},{"ID":"3"}]', "[]") }
      local ids, errs = export { fast = true }
      assert.same({}, ids)
      assert.equal(1, #errs)
      assert.equal("BAD_RESPONSE", errs[1].code)
      assert.matches("increasing ID", errs[1].description)
      assert.equal(1, requests())
    end)

    it("keeps the caller's filter and select", function()
      portal:reset { leads = 3000 }
      local all = generated(3000)
      local ids = export({ fast = true },
        { filter = { [">ID"] = all[100], ["<=ID"] = all[2900] }, select = { "TITLE" } })
      local want = {}
      for i = 101, 2900 do want[#want + 1] = all[i] end
      assert.same(want, ids)
    end)

    it("exports 100,000 leads in at most 42 requests, every id once and ascending", function()
      portal:reset { leads = 100000 }
      local ids, errs = export { fast = true }
      assert.same({}, errs)
      assert.equal(100000, #ids)
      assert.same(generated(100000), ids)
      assert.equal(41, requests())
    end)
  end)

  describe("normal mode", function()
    it("exports 10,000 leads in one counted call and 4 batches, in the caller's order", function()
      portal:reset { leads = 10000 }
      local ids, errs = export {}
      assert.same({}, errs)
      assert.same(generated(10000), ids)
      local log = portal:requests()
      assert.equal(5, #log)
      assert.equal(LIST, log[1].method)
      assert.equal("batch", log[2].method)
      -- start = 50, 100, ... up to the first call's total.
      local calls = list_calls()
      assert.equal(200, #calls)
      for i, p in ipairs(calls) do
        if i > 1 then assert.equal((i - 1) * 50, tonumber(p.start)) end
      end

      portal:reset { leads = 3000 }
      local desc = export({}, { order = { ID = "DESC" }, select = { "ID" } })
      local all = generated(3000)
      assert.equal(3000, #desc)
      for i, id in ipairs(desc) do assert.equal(all[3001 - i], id) end
    end)

    it("reports progress per page with the total", function()
      portal:reset { leads = 2600 }
      local seen = {}
      for _ in client:each(LIST, {}, { progress = function(n, total) seen[#seen + 1] = { n, total } end }) do end
      assert.equal(52, #seen)
      assert.same({ 50, 2600 }, seen[1])
      assert.same({ 2600, 2600 }, seen[52])
      assert.equal(3, requests())
    end)

    it("ends with BAD_RESPONSE when a page in a batch outnumbers the total", function()
      portal:reset { leads = 200 }
      portal:fault { method = "batch", kind = "canned", status = 200, body = [[{"result":{"result":{"p0":[{"ID":"1"}],
        "p1":[{"ID":"2"}],"p2":[{"ID":"3"}]},"result_error":[],"result_total":{"p0":3,"p1":3,"p2":3},
        "result_next":[],"result_time":[]},"time":{}}]] }
      local ids, errs = export {}
      assert.equal(50, #ids)
      assert.equal(1, #errs)
      assert.equal("BAD_RESPONSE", errs[1].code)
      assert.matches("total", errs[1].description)
    end)
  end)

  describe("page_batch", function()
    it("sends that many list calls a request, in both modes", function()
      local all = generated(1000)
      -- fast: 20 full pages in batches of 7, 7, 6 + an empty 7th page, and a look from the last id
      local ids = export { fast = true, page_batch = 7 }
      assert.same(all, ids)
      local log = portal:requests()
      assert.equal(4, #log)
      for i = 1, 3 do assert.equal(7, #log[i].calls) end
      portal:reset()
      ids = export { page_batch = 7 } -- 1 counted call, then 19 pages: 7, 7, 5
      assert.same(all, ids)
      log = portal:requests()
      assert.equal(4, #log)
      assert.equal(5, #log[4].calls)
      portal:reset()
      ids = export { fast = true, page_batch = 1 }
      assert.same(all, ids)
      assert.equal(21, requests())
      for _, r in ipairs(portal:requests()) do assert.equal(LIST, r.method) end
    end)

    it("refuses bad options and sends nothing", function()
      for _, opts in ipairs {
        { page_batch = 0 }, { page_batch = 51 }, { page_batch = 2.5 }, { page_batch = "50" },
        { parallel = 0 }, { parallel = 1.5 }, { fast = "yes" }, { pages = 2 }, { id_key = "a b" },
      } do
        local ok, err = pcall(client.each, client, LIST, {}, opts)
        assert.is_false(ok)
        local name = next(opts)
        assert.matches("opts%." .. name, tostring(err))
      end
      assert.equal(0, requests())
    end)
  end)

  describe("failures", function()
    it("a failed request in the middle ends the export after every row before it", function()
      portal:reset { leads = 10000 }
      local all = generated(10000)
      for _, fast in ipairs { true, false } do
        portal:reset { leads = 10000 }
        local ids, errs = {}, {}
        for row, err in client:each(LIST, { select = { "ID" } }, { fast = fast }) do
          if row then ids[#ids + 1] = tonumber(row.ID) else errs[#errs + 1] = err end
          if #ids == 2500 and row then portal:fault { method = "batch", kind = "error500", times = 1 } end
        end
        assert.equal(1, #errs)
        assert.equal("INTERNAL_SERVER_ERROR", errs[1].code)
        -- Every row before the failure, once, in order, and nothing after it.
        local want = fast and 2500 or 2550
        assert.equal(want, #ids)
        for i = 1, want do assert.equal(all[i], ids[i]) end
      end
    end)

    it("a retried request loses and repeats no row", function()
      portal:reset { leads = 10000 }
      local c = bitrix24.webhook(portal.webhook_url, support.opts { tries = 2 })
      finally(function() c:close() end)
      local ids = {}
      for row, err in c:each(LIST, { select = { "ID" } }, { fast = true }) do
        assert.is_nil(err)
        ids[#ids + 1] = tonumber(row.ID)
        if #ids == 2600 then portal:fault { method = "batch", kind = "error500", times = 1 } end
      end
      assert.same(generated(10000), ids)
      assert.equal(6, requests())
    end)

    it("a failed call inside a batch: the rows of the calls before it, then its error", function()
      portal:reset { leads = 5000 }
      -- 0.01 s a list call against a limit of 0.295 s: the 31st call fails.
      portal:configure { op_limit = 0.295, op_cost = { [LIST] = 0.01 } }
      local ids, errs = export { fast = true }
      assert.equal(1, #errs)
      assert.equal("OPERATION_TIME_LIMIT", errs[1].code)
      assert.equal(LIST, errs[1].method)
      local all = generated(5000)
      assert.equal(30 * 50, #ids)
      for i = 1, #ids do assert.equal(all[i], ids[i]) end
    end)
  end)

  describe("operating time", function()
    it("each list call in a batch is charged to the list method: pacing waits before its limit", function()
      -- 0.01 s a call, 50 a batch: 0.5 s a request against a limit of 1.2 s
      -- in a 2 s window. The client waits after the second batch instead of
      -- letting the third fail half way.
      portal:reset { leads = 7500 }
      portal:configure { op_limit = 1.2, op_bucket = 0.2, op_cost = { [LIST] = 0.01 } }
      local c = bitrix24.webhook(portal.webhook_url, support.opts { operating_limit = 1.2 })
      finally(function() c:close() end)
      local ids, errs = export({ fast = true }, nil, c)
      assert.same({}, errs)
      assert.same(generated(7500), ids)
      for _, r in ipairs(portal:requests()) do
        for _, call in ipairs(r.calls or {}) do assert.is_nil(call.error) end
      end
      -- Without what the batch answers say of the list method's time, the
      -- third batch fails half way.
      portal:reset { leads = 7500 }
      portal:configure { op_limit = 1.2, op_bucket = 0.2, op_cost = { [LIST] = 0.01 } }
      local _, blind = export { fast = true }
      assert.equal("OPERATION_TIME_LIMIT", blind[1] and blind[1].code)
    end)
  end)

  describe("operating time of client:batch", function()
    it("charges each command to its own method and paces before the third request would pass the limit", function()
      portal:configure { op_limit = 1.2, op_bucket = 0.2, op_cost = { [LIST] = 0.01 } }
      local c = bitrix24.webhook(portal.webhook_url, support.opts { operating_limit = 1.2 })
      finally(function() c:close() end)
      local commands = {}
      for i = 1, 150 do commands["l" .. i] = { LIST, { start = -1, select = { "ID" } } } end
      local results = assert(c:batch(commands))
      for key, item in pairs(results) do assert.is_nil(item.error, key) end
      assert.equal(3, requests())
    end)
  end)

  describe("parallel", function()
    it("fast mode: id ranges side by side, rows still in order, every id once", function()
      portal:reset { leads = 10000 }
      local ids, errs = export { fast = true, parallel = 4 }
      assert.same({}, errs)
      assert.same(generated(10000), ids)
      -- The first batch finds the first and last ids; ranges are sized to
      -- fill at most 95% of a batch.
      assert.is_true(requests() <= 9, requests() .. " requests")
      for _, p in ipairs(list_calls()) do assert.equal(-1, tonumber(p.start)) end
    end)

    it("fast mode: a table that ends inside the first request, or inside the first range", function()
      -- The first request asks for the first and the last page: a table
      -- ending in the first needs nothing more, one whose rest fits in a
      -- batch one range (whose batch also looks above the last id).
      for _, n in ipairs { 49, 50, 51, 1000, 2300, 2449, 2450, 2451, 2500 } do
        portal:reset { leads = n }
        local ids, errs = export { fast = true, parallel = 4 }
        assert.same({}, errs)
        assert.same(generated(n), ids)
        local most = n < 50 and 1 or n <= 2300 and 2 or 3
        assert.is_true(requests() <= most, n .. " leads: " .. requests() .. " requests")
      end
    end)

    it("fast mode with leads deleted and added during the export", function()
      portal:reset { leads = 6000 }
      local before = generated(6000)
      local ahead = { before[3000], before[5999] }
      portal:churn { every = 7, delete = ahead, delete_count = 2, append = 4, times = 6 }
      local ids, errs = export { fast = true, parallel = 3, page_batch = 10 }
      assert.same({}, errs)
      assert_ascending(ids)
      local report = portal:churn {}
      local got, deleted = set_of(ids), set_of(report.deleted)
      for _, id in ipairs(before) do
        if not deleted[id] then assert.is_true(got[id], "surviving id " .. id .. " missing") end
      end
      for _, id in ipairs(ahead) do assert.is_nil(got[id]) end
      for _, id in ipairs(report.appended) do assert.is_true(got[id], "added id " .. id .. " missing") end
    end)

    it("fast mode with one call a request: the ranges, then the tail as a call of its own", function()
      portal:reset { leads = 600 }
      local before = generated(600)
      -- Two leads added after every 5th list call, three times: the last
      -- ones while the ranges are read, so only a look above the last id
      -- finds them.
      portal:churn { every = 5, append = 2, times = 3 }
      local ids, errs = export { fast = true, parallel = 3, page_batch = 1 }
      assert.same({}, errs)
      assert_ascending(ids)
      local report = portal:churn {}
      local got = set_of(ids)
      for _, id in ipairs(before) do assert.is_true(got[id], "id " .. id .. " missing") end
      assert.equal(6, #report.appended)
      for _, id in ipairs(report.appended) do assert.is_true(got[id], "added id " .. id .. " missing") end
      assert.equal(606, #ids)
      -- Plain calls only (no batch), the probe's two pages excepted.
      assert.equal(1, support.count_requests(portal, "batch"))
    end)

    it("has a round's requests in flight together (generous bound: under 0.75 of one at a time)", function()
      local core = require "bitrix24.core"
      local function timed(opts)
        portal:reset { leads = 20000 }
        -- Every answer waits 0.4 s: the latency, not the machine's load, sets
        -- the pace (a batch of 50 pages also costs the portal's one worker CPU).
        portal:configure { latency = 0.4 }
        local t0 = core.monotonic()
        local ids, errs = export(opts)
        assert.same({}, errs)
        assert.equal(20000, #ids)
        return core.monotonic() - t0, requests()
      end
      for _, fast in ipairs { false, true } do
        local alone, n1 = timed { fast = fast }
        local together, n4 = timed { fast = fast, parallel = 4 }
        assert.is_true(alone >= n1 * 0.4, "one at a time took " .. alone .. " s")
        assert.is_true(together < alone * 0.75, string.format("%s: %.2f s (%d requests) with 4, %.2f s (%d) with 1",
          fast and "fast" or "normal", together, n4, alone, n1))
      end
    end)

    it("normal mode: offset batches side by side, rows in order", function()
      portal:reset { leads = 10000 }
      local ids, errs = export { parallel = 3 }
      assert.same({}, errs)
      assert.same(generated(10000), ids)
      assert.equal(5, requests())
    end)

    it("a failure in one unit ends the export after the rows of the units before it", function()
      portal:reset { leads = 10000 }
      local all = generated(10000)
      local ids, errs = {}, {}
      -- After the counted call, a round of 3 batches: the second batch the
      -- portal sees fails (the first passes a fault that changes nothing).
      portal:fault { method = "batch", kind = "latency", delay = 0, times = 1 }
      portal:fault { method = "batch", kind = "error500", times = 1 }
      for row, err in client:each(LIST, { select = { "ID" } }, { parallel = 3, page_batch = 10 }) do
        if row then ids[#ids + 1] = tonumber(row.ID) else errs[#errs + 1] = err end
      end
      assert.equal(1, #errs)
      assert.equal("INTERNAL_SERVER_ERROR", errs[1].code)
      -- Whichever batch failed, the rows before it and none after it.
      assert.is_true(#ids == 50 or #ids == 550 or #ids == 1050, #ids .. " rows")
      for i = 1, #ids do assert.equal(all[i], ids[i]) end
    end)
  end)
end)
