-- Pacing (the leaky bucket, shared between processes), the operating-time
-- limit, and which failures are retried: against a fake portal that
-- enforces the same limits.

local support = require "support"
local bitrix24 = require "bitrix24"
local core = require "bitrix24.core"

local ITEMS_GET = "crm.lead.contact.items.get"

local statuses, ids = support.statuses, support.ids

-- The pacing specs run against a bucket ten times faster than the
-- portal's real 2 requests/s, with the same ceiling in requests (10): the
-- same properties hold in a tenth of the time. One case runs at the real
-- rate under the "slow" tag (CI runs it once; see docs/development.md).
local FAST_RATE, REAL_RATE, BURST = 20, 2, 10
local LEADS, PER_REQUEST = 2000, 50

-- Fetches the 2,000 leads' contacts with a client paced at `rate`: no 503,
-- at least the time the bucket needs, and sleeping, not spinning.
local function fetches_paced(portal, rate)
  local client = bitrix24.webhook(portal.webhook_url, { rate = rate, burst = BURST })
  local wall, cpu = core.monotonic(), os.clock()
  local rows, errs = client:lead_contacts(ids(1, LEADS))
  wall, cpu = core.monotonic() - wall, os.clock() - cpu
  client:close()
  assert.is_table(rows, tostring(errs))
  local requests = LEADS / PER_REQUEST
  assert.same({ ["200"] = requests }, statuses(portal))
  -- 40 requests: 9 at once (one unit of the burst is kept spare), then
  -- `rate` a second: at least 31 / rate s (15.5 s at 2/s, 1.55 s at 20/s),
  -- less one request's worth of leeway.
  local least = (requests - (BURST - 1) - 1) / rate
  assert.is_true(wall >= least, "took " .. wall .. " s")
  assert.is_true(cpu < wall / 4, "cpu " .. cpu .. " s of " .. wall .. " s")
end

describe("pacing", function()
  local portal, dir
  support.use_portal({ rate = FAST_RATE, burst = BURST }, function(p) portal = p end)

  setup(function() dir = support.tmpdir() end)
  teardown(function() support.remove_dir(dir) end)

  it("without the client's bucket, the portal does answer 503 (the check can fail)", function()
    local client = bitrix24.webhook(portal.webhook_url, { rate_limit = false, tries = 1 })
    local rows, errs = client:lead_contacts(ids(1, LEADS))
    client:close()
    assert.is_nil(rows)
    assert.equal("QUERY_LIMIT_EXCEEDED", errs.code)
    assert.equal(503, errs.status)
    assert.is_true((statuses(portal)["503"] or 0) > 0)
  end)

  it("fetches 2,000 leads' contacts with no 503, sleeping instead of spinning", function()
    fetches_paced(portal, FAST_RATE)
  end)

  it("shares one budget between two processes through a file", function()
    local script = support.write_script(dir .. "/job.lua", ([[
      local bitrix24 = require "bitrix24"
      local from = tonumber(arg[1])
      local client = bitrix24.webhook(%q, { rate = %d, burst = %d, budget = bitrix24.file_budget(%q) })
      local ids = {}
      for i = from, from + 999 do ids[#ids + 1] = i end
      local rows, err = client:lead_contacts(ids)
      print(rows and "OK" or ("FAIL " .. tostring(err)))
    ]]):format(portal.webhook_url, FAST_RATE, BURST, dir .. "/budget.json"))
    local out = support.run_two(script, 1, 1001)
    assert.equal("OK\nOK\n", out)
    assert.same({ ["200"] = 40 }, statuses(portal))
  end)

  it("knows the enterprise plan's bucket", function()
    local client = bitrix24.webhook(portal.webhook_url, { plan = "enterprise" })
    assert.same({ 5, 250 }, { client._limiter.rate, client._limiter.burst })
    client:close()
    assert.has_error(function() bitrix24.webhook(portal.webhook_url, { plan = "gold" }) end)
    assert.has_error(function() bitrix24.webhook(portal.webhook_url, { budget = {} }) end)
  end)
end)

-- End to end at the portal's real rate: about 16 s, hence the tag.
describe("pacing at the real 2 requests/s #slow", function()
  local portal
  support.use_portal({ rate = REAL_RATE, burst = BURST, reset = false }, function(p) portal = p end)

  it("fetches 2,000 leads' contacts with no 503, sleeping instead of spinning", function()
    fetches_paced(portal, REAL_RATE)
  end)
end)

describe("retries", function()
  local portal

  support.use_portal(nil, function(p) portal = p end)

  local function client(extra)
    local o = { rate = 1000, burst = 100000 }
    for k, v in pairs(extra or {}) do o[k] = v end
    return bitrix24.webhook(portal.webhook_url, o)
  end

  local QLE = '{"error":"QUERY_LIMIT_EXCEEDED","error_description":"Too many requests"}'

  it("retries QUERY_LIMIT_EXCEEDED with backoff, writes included", function()
    local c = client()
    portal:fault { method = "crm.lead.contact.add", kind = "canned", status = 503, body = QLE, times = 2 }
    local t0 = core.monotonic()
    local ok, err = c:call("crm.lead.contact.add", { id = 2, fields = { CONTACT_ID = 1010 } })
    local elapsed = core.monotonic() - t0
    c:close()
    assert.is_nil(err)
    assert.is_true(ok)
    assert.same({ ["503"] = 2, ["200"] = 1 }, statuses(portal))
    -- Backoff with jitter: at least half of 0.5 s + 1 s.
    assert.is_true(elapsed >= 0.7, "retried after " .. elapsed .. " s")
  end)

  it("retries a read after a 5xx, a lost connection or a timeout", function()
    local c = client { timeout = 0.5 }
    for _, kind in ipairs { "error500", "html502", "reset", "truncate" } do
      portal:reset()
      portal:fault { method = ITEMS_GET, kind = kind, times = kind == "reset" and 2 or 1 }
      local rows, err = c:call(ITEMS_GET, { id = 1 })
      assert.is_nil(err, kind)
      assert.equal(2, #rows)
    end
    portal:reset()
    portal:fault { method = ITEMS_GET, kind = "latency", delay = 2, times = 1 }
    local rows = assert(c:call(ITEMS_GET, { id = 1 }))
    assert.equal(2, #rows)
    c:close()
  end)

  it("never sends a write twice by itself", function()
    local c = client()
    for _, kind in ipairs { "error500", "html502", "truncate" } do
      portal:reset()
      portal:fault { method = "crm.lead.contact.add", kind = kind, times = 1 }
      local ok, err = c:call("crm.lead.contact.add", { id = 2, fields = { CONTACT_ID = 1010 } })
      assert.is_nil(ok, kind)
      assert.is_table(err, kind)
      assert.equal(1, #portal:requests(), kind)
    end
    c:close()
  end)

  it("repeats writes when the caller opts in", function()
    local c = client { retry_writes = true }
    portal:fault { method = "crm.lead.contact.add", kind = "error500", times = 1 }
    assert.is_true(c:call("crm.lead.contact.add", { id = 2, fields = { CONTACT_ID = 1010 } }))
    assert.equal(2, #portal:requests())
    c:close()
  end)

  it("retries a batch of reads, but not a batch with a write", function()
    local c = client()
    portal:fault { method = "batch", kind = "error500", times = 1 }
    assert(c:batch { a = { ITEMS_GET, { id = 1 } }, b = { "crm.lead.contact.fields" } })
    assert.equal(2, #portal:requests())
    portal:reset()
    portal:fault { method = "batch", kind = "error500", times = 1 }
    local results, err = c:batch { a = { ITEMS_GET, { id = 1 } },
      b = { "crm.lead.contact.add", { id = 2, fields = { CONTACT_ID = 1010 } } } }
    assert.is_nil(results)
    assert.equal("INTERNAL_SERVER_ERROR", err.code)
    assert.equal(1, #portal:requests())
    c:close()
  end)

  it("says how many tries were made", function()
    local c = client { tries = 3 }
    portal:fault { method = ITEMS_GET, kind = "error500" }
    local rows, err = c:call(ITEMS_GET, { id = 1 })
    c:close()
    assert.is_nil(rows)
    assert.equal(3, err.tries)
    assert.matches("after 3 tries", tostring(err))
    assert.equal(3, #portal:requests())
  end)

  it("gives up at the deadline", function()
    local c = client { tries = 50, deadline = 2 }
    portal:fault { method = ITEMS_GET, kind = "error500" }
    local t0 = core.monotonic()
    local _, err = c:call(ITEMS_GET, { id = 1 })
    local elapsed = core.monotonic() - t0
    c:close()
    assert.equal("INTERNAL_SERVER_ERROR", err.code)
    assert.is_true(elapsed <= 2.5, "took " .. elapsed .. " s")
    assert.is_true(err.tries > 1 and err.tries < 50)
  end)

  it("does not retry what a retry cannot fix", function()
    local c = client()
    local _, err = c:call(ITEMS_GET, { id = 13 })
    assert.equal("ACCESS_DENIED", err.code)
    assert.equal(1, err.tries)
    assert.equal(1, #portal:requests())
    c:close()
  end)
end)

describe("operating time", function()
  local portal
  -- Buckets of 0.2 s: the 10-bucket window is 2 s instead of 10 minutes.
  support.use_portal({ op_limit = 0.1, op_bucket = 0.2, op_cost = { [ITEMS_GET] = 0.04 } },
    function(p) portal = p end)

  it("slows down before the method's limit is reached", function()
    local c = bitrix24.webhook(portal.webhook_url, { rate = 1000, burst = 100000, operating_limit = 0.1 })
    local t0 = core.monotonic()
    for _ = 1, 8 do assert(c:call(ITEMS_GET, { id = 1 })) end
    local elapsed = core.monotonic() - t0
    c:close()
    assert.same({ ["200"] = 8 }, statuses(portal))
    assert.is_true(elapsed >= 1, "took " .. elapsed .. " s")
  end)

  it("waits for operating_reset_at after OPERATION_TIME_LIMIT when that is soon enough", function()
    local c = bitrix24.webhook(portal.webhook_url, { rate = 1000, burst = 100000, max_wait = 10 })
    for _ = 1, 6 do assert(c:call(ITEMS_GET, { id = 1 })) end
    c:close()
    local s = statuses(portal)
    assert.is_true((s["429"] or 0) >= 1)
    assert.equal(6, s["200"])
  end)

  it("fails with the time the method unblocks when that is past max_wait", function()
    local c = bitrix24.webhook(portal.webhook_url, { rate = 1000, burst = 100000, max_wait = 0.01 })
    local err
    for _ = 1, 5 do
      local rows
      rows, err = c:call(ITEMS_GET, { id = 1 })
      if not rows then break end
    end
    c:close()
    assert.equal("OPERATION_TIME_LIMIT", err.code)
    assert.matches("unblocks at %d+%-%d+%-%d+ %d+:%d+:%d+ UTC", err.description)
    -- Other methods keep working.
    c = bitrix24.webhook(portal.webhook_url, { rate = 1000, burst = 100000 })
    assert(c:call("crm.lead.contact.fields"))
    c:close()
  end)
end)
