-- Many requests in flight (opts.parallel): client:calls, and batch and
-- lead_contacts sending their requests together, against the fake portal
-- in nginx. Answers come back in input order, the budget holds with 8 in
-- flight, and a failure, close() or a raised error stops the others.

local support = require "support"
local bitrix24 = require "bitrix24"
local core = require "bitrix24.core"

local ITEMS_GET = "crm.lead.contact.items.get"

local statuses, ids = support.statuses, support.ids

-- n calls of items.get for leads 1..n (lead 13 answers ACCESS_DENIED).
local function item_calls(n)
  local list = {}
  for i = 1, n do list[i] = { ITEMS_GET, { id = i } } end
  return list
end

describe("fan-out", function()
  local portal

  setup(function()
    -- Every answer takes 50 ms, so requests really overlap.
    portal = support.start_portal { tls = false, rate = 1000, burst = 100000, latency = 0.05 }
  end)

  teardown(function()
    if portal then portal:stop() end
  end)

  before_each(function() portal:reset() end)

  local function client(opts) return bitrix24.webhook(portal.webhook_url, support.opts(opts)) end

  local function leads_on_portal(c)
    return select(3, assert(c:call("crm.lead.list", {}))).total
  end

  describe("client:calls", function()
    it("returns each call's result or error at its own index, as one by one", function()
      local c = client()
      local results, errs = c:calls(item_calls(30), { parallel = 8 })
      for i = 1, 30 do
        local rows, err = c:call(ITEMS_GET, { id = i })
        if i == 13 then
          assert.is_nil(results[i])
          assert.equal("ACCESS_DENIED", errs[i].code)
          assert.equal(err.code, errs[i].code)
          assert.equal(ITEMS_GET, errs[i].method)
        else
          assert.is_nil(errs[i], tostring(errs[i]))
          assert.same(rows, results[i])
        end
      end
      c:close()
      assert.equal(60, #portal:requests())
    end)

    it("has up to opts.parallel calls in flight, and only one with parallel = 1", function()
      local c = client()
      local t0 = core.monotonic()
      local _, errs = c:calls(item_calls(24), { parallel = 8 })
      local together = core.monotonic() - t0
      assert.equal("ACCESS_DENIED", errs[13].code)
      t0 = core.monotonic()
      c:calls(item_calls(24), { parallel = 1 })
      local alone = core.monotonic() - t0
      c:close()
      -- 24 x 50 ms one by one is at least 1.2 s; 8 at a time, 3 rounds.
      assert.is_true(alone >= 1.2, "one by one took " .. alone .. " s")
      assert.is_true(together < alone / 2, string.format("%.2f s with 8, %.2f s with 1", together, alone))
    end)

    it("takes the client's opts.parallel when the call gives none", function()
      local c = client { parallel = 6 }
      local t0 = core.monotonic()
      c:calls(item_calls(24))
      local elapsed = core.monotonic() - t0
      c:close()
      assert.is_true(elapsed < 1.2, "took " .. elapsed .. " s")
    end)

    it("with writes and a failure in the middle, every call comes back as a result or an error", function()
      local c = client { tries = 1 }
      local before = leads_on_portal(c)
      local sent = #portal:requests()
      local list = {}
      for i = 1, 24 do
        list[i] = i % 2 == 1 and { "crm.lead.add", { fields = { TITLE = "m" .. i } } } or { "crm.lead.list", {} }
      end
      portal:fault { method = "crm.lead.add", kind = "error500", after = 3, times = 1 }
      local results, errs = c:calls(list, { parallel = 4 })
      local added, failed = 0, 0
      for i = 1, #list do
        assert.is_true((results[i] ~= nil) ~= (errs[i] ~= nil), "call " .. i)
        if errs[i] then
          failed = failed + 1
          assert.equal("INTERNAL_SERVER_ERROR", errs[i].code)
          assert.equal("crm.lead.add", errs[i].method)
        elseif list[i][1] == "crm.lead.add" then
          added = added + 1
        end
      end
      assert.equal(1, failed)
      -- The calls after the failure were still sent, once each, and ran.
      assert.equal(#list, #portal:requests() - sent)
      assert.equal(added, leads_on_portal(c) - before)
      c:close()
    end)

    it("reports progress once per call, counting up to the total", function()
      local c = client()
      local seen = {}
      c:calls(item_calls(10), { parallel = 4, progress = function(done, total) seen[#seen + 1] = done .. "/" .. total end })
      c:close()
      assert.same({ "1/10", "2/10", "3/10", "4/10", "5/10", "6/10", "7/10", "8/10", "9/10", "10/10" }, seen)
    end)

    it("checks every call before sending any", function()
      local c = client()
      local list = item_calls(5)
      list[4] = { ITEMS_GET, { id = "x" } }
      assert.has_error(function() c:calls(list, { parallel = 4 }) end,
        "bitrix24: crm.lead.contact.items.get: params.id must be a positive integer, got \"x\"")
      assert.equal(0, #portal:requests())
      assert.has_error(function() c:calls({ "crm.lead.list" }) end,
        "bitrix24: calls: list[1] must be a table { method, params }")
      c:close()
    end)

    it("each takes opts.parallel and pages as before", function()
      local c = client()
      local plain, with = {}, {}
      for lead in c:each("crm.lead.list", { select = { "ID" } }) do plain[#plain + 1] = lead.ID end
      for lead in c:each("crm.lead.list", { select = { "ID" } }, { parallel = 4 }) do with[#with + 1] = lead.ID end
      c:close()
      assert.is_true(#plain > 0)
      assert.same(plain, with)
    end)

    it("refuses a parallel that is not a whole number from 1 to 256", function()
      local c = client()
      for _, bad in ipairs { 0, 1.5, 257, "4" } do
        assert.has_error(function() c:calls(item_calls(2), { parallel = bad }) end)
        assert.has_error(function() c:batch({ a = { ITEMS_GET, { id = 1 } } }, { parallel = bad }) end)
        assert.has_error(function() c:lead_contacts({ 1 }, { parallel = bad }) end)
        assert.has_error(function() c:each("crm.lead.list", {}, { parallel = bad }) end)
        assert.has_error(function() client { parallel = bad } end)
      end
      c:close()
      assert.equal(0, #portal:requests())
    end)
  end)

  describe("a window (fanout.window)", function()
    local fanout = require "bitrix24.fanout"
    local pipeline = require "bitrix24.pipeline"
    local cjson = require "cjson"

    local function items(c, id)
      return pipeline.request(c, ITEMS_GET, cjson.encode { id = id })
    end

    it("takes requests added while others are in flight, answers in the order added, at most parallel at once",
      function()
        local c = client()
        local w = fanout.window(c, 3)
        for id = 1, 3 do w.add(items(c, id)) end
        local got = {}
        -- Each answer taken lets one more in: 12 requests, 3 in flight.
        for id = 4, 12 do
          local env, err = w.take()
          got[#got + 1] = env and env.result or err.code
          w.add(items(c, id))
        end
        for _ = 1, 3 do
          local env, err = w.take()
          got[#got + 1] = env and env.result or err.code
        end
        for id = 1, 12 do
          assert.same(assert(c:call(ITEMS_GET, { id = id })), got[id])
        end
        -- Every answer takes 50 ms: no 50 ms holds more than 3 arrivals.
        local times = {}
        for i, r in ipairs(portal:requests()) do
          if i <= 12 then times[#times + 1] = r.time end
        end
        table.sort(times)
        for i = 4, #times do assert.is_true(times[i] - times[i - 3] > 0.04, "4 arrivals within 40 ms") end
        c:close()
      end)

    it("an export left early with requests in flight does not disturb the next fan-out", function()
      portal:reset { leads = 1000 }
      local c = client()
      local n = 0
      for _ in c:each("crm.lead.list", { select = { "ID" } }, { parallel = 4, page_batch = 1 }) do
        n = n + 1
        if n == 60 then break end
      end
      local results, errs = c:calls(item_calls(8), { parallel = 4 })
      for id = 1, 8 do
        assert.is_nil(errs[id])
        assert.same(assert(c:call(ITEMS_GET, { id = id })), results[id])
      end
      c:close()
    end)

    it("close() lets the requests in flight go, and the client goes on", function()
      local c = client()
      local w = fanout.window(c, 4)
      for id = 1, 8 do w.add(items(c, id)) end
      assert.is_table((w.take()))
      w.close()
      local rows = assert(c:call(ITEMS_GET, { id = 2 }))
      assert.is_table(rows)
      -- Only those in flight reached the portal: the 4 first and the call.
      assert.is_true(#portal:requests() <= 6, #portal:requests() .. " requests")
      c:close()
    end)
  end)

  describe("OAuth", function()
    it("an expired token met by many calls in flight is refreshed once", function()
      portal:reset { tokens = true }
      local info = portal:info()
      local refreshed = 0
      local c = bitrix24.oauth({ endpoint = portal.oauth_endpoint, token_url = portal.token_url,
        access_token = info.access_token, refresh_token = info.refresh_token, client_id = info.client_id,
        client_secret = info.client_secret, on_refresh = function() refreshed = refreshed + 1 end },
        support.opts { parallel = 8 })
      portal:expire_tokens()
      local results, errs = c:calls(item_calls(16))
      c:close()
      for i = 1, 16 do
        if i ~= 13 then assert.is_table(results[i], tostring(errs[i])) end
      end
      assert.equal(1, support.count_requests(portal, "oauth.token"))
      assert.equal(1, refreshed)
    end)
  end)

  describe("batch and lead_contacts", function()
    it("send independent requests together, with the same results as one by one", function()
      local c = client()
      local ids_ = ids(1, 500)
      local t0 = core.monotonic()
      local rows, errs = assert(c:lead_contacts(ids_, { parallel = 5 }))
      local together = core.monotonic() - t0
      t0 = core.monotonic()
      local rows1, errs1 = assert(c:lead_contacts(ids_, { parallel = 1 }))
      local alone = core.monotonic() - t0
      c:close()
      assert.same(rows1, rows)
      assert.same({ "ACCESS_DENIED" }, { errs[13].code })
      assert.equal(errs1[13].code, errs[13].code)
      assert.equal(20, #portal:requests())
      assert.is_true(together < alone, string.format("%.2f s with 5, %.2f s with 1", together, alone))
    end)

    it("reports progress per request in order, and keeps err.partial's meaning", function()
      local c = client()
      local seen = {}
      local rows = assert(c:lead_contacts(ids(1, 160), { parallel = 4,
        progress = function(d, t) seen[#seen + 1] = d .. "/" .. t end }))
      assert.same({ "50/160", "100/160", "150/160", "160/160" }, seen)
      assert.equal(2, #rows[1])
      c:close()
    end)

    it("a failure in the middle stops the others and keeps what came before it", function()
      local c = client { tries = 1 }
      -- The third request to arrive fails; the first two succeed.
      portal:fault { method = "batch", kind = "error500", after = 2, times = 1 }
      local rows, err = c:lead_contacts(ids(1, 1000), { parallel = 2 })
      c:close()
      assert.is_nil(rows)
      assert.equal("INTERNAL_SERVER_ERROR", err.code)
      -- What came back before the failure is whole: 50 leads per request.
      local n = 0
      for id, r in pairs(err.partial.rows) do
        n = n + 1
        assert.is_table(r, tostring(id))
      end
      for _ in pairs(err.partial.errors) do n = n + 1 end
      assert.is_true(n <= 100 and n % 50 == 0, n .. " leads in partial")
      -- Nothing more went out than the requests in flight around it.
      assert.is_true(#portal:requests() <= 5, #portal:requests() .. " requests")
    end)

    it("a batch with writes goes one request at a time: none is sent after a failure", function()
      local c = client { tries = 1 }
      local before = leads_on_portal(c)
      local sent = #portal:requests()
      local commands = {}
      for i = 1, 150 do commands["k" .. i] = { "crm.lead.add", { fields = { TITLE = "w" .. i } } } end
      -- The second request fails (the portal does not run it).
      portal:fault { method = "batch", kind = "error500", after = 1, times = 1 }
      local res, err = c:batch(commands, { parallel = 3 })
      assert.is_nil(res)
      assert.equal("INTERNAL_SERVER_ERROR", err.code)
      local reported = 0
      for _, item in pairs(err.partial) do
        assert.is_nil(item.error)
        reported = reported + 1
      end
      assert.equal(50, reported)
      assert.equal(2, #portal:requests() - sent)
      -- Every lead the portal made is in err.partial.
      assert.equal(reported, leads_on_portal(c) - before)
      c:close()
    end)

    it("a batch of writes with halt goes one request at a time", function()
      local c = client()
      local commands = {}
      for i = 1, 120 do commands["c" .. i] = { "crm.lead.contact.items.get", { id = i } } end
      local results = assert(c:batch(commands, { halt = true, parallel = 8 }))
      c:close()
      -- halt stops at lead 13's ACCESS_DENIED: the other requests never went.
      assert.equal("ACCESS_DENIED", results.c13.error.code)
      assert.equal(1, #portal:requests())
    end)
  end)

  describe("stopping", function()
    it("client:close() from a callback stops the fan-out: the rest are CANCELLED", function()
      local c = client()
      local results, errs = c:calls(item_calls(40), { parallel = 4, progress = function(done)
        if done == 2 then c:close() end
      end })
      assert.is_table(results[1])
      assert.is_table(results[2])
      for i = 3, 40 do
        assert.is_nil(results[i])
        assert.equal("CANCELLED", errs[i].code)
        assert.equal("client", errs[i].kind)
      end
      assert.is_true(#portal:requests() < 12, #portal:requests() .. " requests")
      assert.has_error(function() c:call(ITEMS_GET, { id = 1 }) end, "bitrix24: call: the client is closed")
      -- The same through batch: the batch fails with CANCELLED and its partial.
      c = client()
      local rows, err = c:lead_contacts(ids(1, 500), { parallel = 3, progress = function() c:close() end })
      assert.is_nil(rows)
      assert.equal("CANCELLED", err.code)
      assert.is_table(err.partial.rows[1])
    end)

    it("client:close() from on_request ends the calls with CANCELLED, one at a time or together", function()
      for _, parallel in ipairs { 1, 2 } do
        local c
        c = client { parallel = parallel, on_request = function() c:close() end }
        local sent = #portal:requests()
        local results, errs = c:calls { { ITEMS_GET, { id = 1 } }, { ITEMS_GET, { id = 2 } } }
        for i = 1, 2 do
          assert.is_nil(results[i])
          assert.equal("CANCELLED", errs[i].code, "parallel " .. parallel)
        end
        assert.equal(0, #portal:requests() - sent)
      end
      local c
      c = client { on_request = function() c:close() end }
      local rows, err = c:call(ITEMS_GET, { id = 1 })
      assert.is_nil(rows)
      assert.equal("CANCELLED", err.code)
      -- Closed by on_response after a failed try: that failure, no next try.
      c = client { tries = 3, on_response = function() c:close() end }
      portal:fault { method = ITEMS_GET, kind = "error500", times = 1 }
      local sent = #portal:requests()
      rows, err = c:call(ITEMS_GET, { id = 1 })
      assert.is_nil(rows)
      assert.equal("INTERNAL_SERVER_ERROR", err.code)
      assert.equal(1, #portal:requests() - sent)
    end)

    it("a raised error from a callback stops the fan-out, and the client stays usable", function()
      local c = client()
      local ok, msg = pcall(c.calls, c, item_calls(40), { parallel = 4, progress = function(done)
        if done == 3 then error("stop here") end
      end })
      assert.is_false(ok)
      assert.matches("stop here", msg)
      local sent = #portal:requests()
      assert.is_true(sent < 12, sent .. " requests")
      -- Nothing in flight went on afterwards, and the pool works again.
      local results, errs = c:calls(item_calls(12), { parallel = 4 })
      assert.equal(sent + 12, #portal:requests())
      assert.same({}, errs)
      for i = 1, 12 do assert.is_table(results[i]) end
      assert.is_table((c:call(ITEMS_GET, { id = 1 })))
      c:close()
    end)

    it("the deadline ends calls still waiting or in flight", function()
      portal:fault { method = ITEMS_GET, kind = "latency", delay = 3 }
      local c = client { deadline = 0.5 }
      local t0 = core.monotonic()
      local results, errs = c:calls(item_calls(6), { parallel = 3 })
      local elapsed = core.monotonic() - t0
      c:close()
      for i = 1, 6 do
        assert.is_nil(results[i])
        assert.equal("TIMEOUT", errs[i].code)
      end
      assert.is_true(elapsed < 2.5, "took " .. elapsed .. " s")
    end)
  end)
end)

describe("fan-out and the budget", function()
  local portal

  setup(function()
    portal = support.start_portal { tls = false, rate = 20, burst = 10, latency = 0.05 }
  end)

  teardown(function()
    if portal then portal:stop() end
  end)

  before_each(function() portal:reset() end)

  it("without the client's bucket, 8 in flight do meet 503 (the check below can fail)", function()
    local c = bitrix24.webhook(portal.webhook_url, { rate_limit = false, tries = 1 })
    local _, errs = c:calls(item_calls(60), { parallel = 8 })
    c:close()
    local limited = 0
    for _, e in pairs(errs) do if e.code == "QUERY_LIMIT_EXCEEDED" then limited = limited + 1 end end
    assert.is_true(limited > 0)
    assert.is_true((statuses(portal)["503"] or 0) > 0)
  end)

  it("with 8 in flight never overshoots the bucket: every request counted, no 503", function()
    local c = bitrix24.webhook(portal.webhook_url, { rate = 20, burst = 10, tries = 1 })
    local results, errs = c:calls(item_calls(60), { parallel = 8 })
    c:close()
    for i = 1, 60 do
      if i ~= 13 then assert.is_table(results[i], tostring(errs[i])) end
    end
    assert.equal("ACCESS_DENIED", errs[13].code)
    assert.equal(60, #portal:requests())
    local s = statuses(portal)
    assert.is_nil(s["503"])
    assert.equal(59, s["200"])
  end)

  it("a 503 seen by one request holds the others back", function()
    -- The client thinks the bucket is large; the portal's is 10 at 20/s.
    local c = bitrix24.webhook(portal.webhook_url, { rate = 1000, burst = 100000, tries = 8 })
    local results, errs = c:calls(item_calls(40), { parallel = 8 })
    c:close()
    for i = 1, 40 do
      if i ~= 13 then assert.is_table(results[i], tostring(errs[i])) end
    end
    -- Each 503 paused every request for a backoff: far fewer 503s than
    -- requests, although nothing else paced them.
    local s = statuses(portal)
    assert.is_true((s["503"] or 0) > 0)
    assert.is_true(s["503"] < 40, s["503"] .. " 503s")
  end)
end)
