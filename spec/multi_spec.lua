-- core.multi: many requests in flight over one libcurl multi handle,
-- against the fake portal in nginx. Each test compares with handle:call,
-- the blocking path, for the same answer.

local support = require "support"
local core = require "bitrix24.core"
local socket = require "socket"

local ITEMS = "crm.lead.contact.items.get"
local FIELDS = "crm.lead.contact.fields"
local unpack = table.unpack or unpack

local function pack(...) return { n = select("#", ...), ... } end

-- The envelope's "time" block holds the portal's clock: it differs between
-- any two requests, so comparisons leave it out (the rest must be equal),
-- also in the envelope a failure carries.
local function without_time(v)
  if type(v) ~= "table" then return v end
  local copy = {}
  for k, x in pairs(v) do
    if k == "envelope" then copy[k] = without_time(x) elseif k ~= "time" then copy[k] = x end
  end
  return copy
end

local function timeless(values)
  local out = { n = values.n }
  for i = 1, values.n do
    local v = values[i]
    if type(v) == "table" then
      v = without_time(v)
    end
    out[i] = v
  end
  return out
end

local function body(id) return '{"id":' .. id .. '}' end

describe("core.multi", function()
  local portal, http, url

  -- Every finished request as ticket -> packed results (the ticket
  -- removed), waiting at most `seconds` in all.
  local function drain(m, seconds)
    local got, deadline = {}, socket.gettime() + (seconds or 10)
    while m:in_flight() > 0 and socket.gettime() < deadline do
      local r = pack(m:wait(0.5))
      if r.n > 0 then
        assert.is_nil(got[r[1]], "a ticket came back twice")
        got[r[1]] = timeless(pack(unpack(r, 2, r.n)))
      end
    end
    assert.equal(0, m:in_flight(), "requests still in flight after the bound")
    return got
  end

  -- What handle:call gives for the same request, time left out.
  local function expected(u, b)
    return timeless(pack(http:call(u, b)))
  end

  local function conns_of(requests)
    local set = {}
    for _, r in ipairs(requests) do set[r.conn] = true end
    return set
  end

  support.use_portal(nil, function(p)
    portal = p
    url = portal.webhook_url .. ITEMS
  end)
  setup(function() http = core.http() end)
  teardown(function() if http then http:close() end end)

  describe("results", function()
    it("are those of call for the same answers, failures included", function()
      local cases = {
        { },
        { kind = "error200" },
        { kind = "error500" },
        { kind = "html502" },
        { kind = "canned", status = 200, body = '{"result": [1, 2' },   -- broken JSON
        { kind = "truncate" },
        { kind = "reset" },
        { kind = "redirect" },
        { kind = "canned", status = 418, body = '{"canned":true}' },
      }
      local m = core.multi()
      for _, case in ipairs(cases) do
        if case.kind then portal:fault { method = ITEMS, kind = case.kind, status = case.status,
                                         body = case.body, times = 1 } end
        local want = expected(url, body(1))
        if case.kind then portal:fault { method = ITEMS, kind = case.kind, status = case.status,
                                         body = case.body, times = 1 } end
        local ticket = m:start(url, body(1))
        local got = drain(m)[ticket]
        if case.kind == "truncate" then
          -- The description counts the bytes left unread, and the answer's
          -- length varies with the digits of its "time" block.
          want[2].description = want[2].description:gsub("%d+", "N")
          got[2].description = got[2].description:gsub("%d+", "N")
        end
        assert.same(want, got, "for " .. tostring(case.kind or "a plain answer"))
        -- Every case is one shape or another of what call returns.
        if case.kind then assert.is_nil(want[1]) else assert.is_table(want[1]) end
      end
      m:close()
    end)

    it("are envelope, status or nil and one failure table, from call as from wait", function()
      local env, status = http:call(url, body(1))
      assert.is_table(env.result)
      assert.equal(200, status)
      -- A portal error: its code and the decoded envelope, no location.
      portal:fault { method = ITEMS, kind = "error200", times = 1 }
      local none, f = http:call(url, body(1))
      assert.is_nil(none)
      assert.is_string(f.code)
      assert.not_equal("", f.description)
      assert.equal(200, f.status)
      assert.equal(f.code, f.envelope.error)
      assert.is_nil(f.location)
      -- A redirect: the status and where it points, no envelope.
      portal:fault { method = ITEMS, kind = "redirect", times = 1 }
      none, f = http:call(url, body(1))
      assert.is_nil(none)
      assert.equal("PORTAL_MOVED", f.code)
      assert.is_true(f.status >= 300 and f.status < 400)
      assert.is_string(f.location)
      assert.is_nil(f.envelope)
      -- No answer at all: no status. (Sent as a write, which libcurl does
      -- not re-send when the kept-alive connection turns out reset.)
      portal:fault { method = ITEMS, kind = "reset", times = 1 }
      none, f = http:call(url, body(1), nil, true)
      assert.is_nil(none)
      assert.equal("NETWORK_ERROR", f.code)
      assert.is_nil(f.status)
      -- The same from wait, behind the ticket.
      local m = core.multi()
      portal:fault { method = ITEMS, kind = "redirect", times = 1 }
      local ticket = m:start(url, body(1))
      local got, result, failure = m:wait(5)
      assert.equal(ticket, got)
      assert.is_nil(result)
      assert.equal("PORTAL_MOVED", failure.code)
      assert.is_string(failure.location)
      m:close()
    end)

    it("are matched to their tickets when they finish out of order", function()
      local want = {}
      for id = 1, 8 do want[id] = expected(url, body(id)) end
      local want_fields = expected(portal.webhook_url .. FIELDS, "{}")
      -- items.get answers late, fields at once: fields finishes first
      -- although it is started last.
      portal:fault { method = ITEMS, kind = "latency", delay = 0.3 }
      local m = core.multi { parallel = 9 }
      local ids = {}
      for id = 1, 8 do ids[m:start(url, body(id))] = id end
      local fields = m:start(portal.webhook_url .. FIELDS, "{}")
      local first = m:wait(5)
      assert.equal(fields, first)
      local got = drain(m)
      local n = 0
      for ticket, values in pairs(got) do
        n = n + 1
        assert.same(want[ids[ticket]], values, "ticket " .. ticket)
      end
      assert.equal(8, n)
      assert.is_true(want_fields[1] ~= nil and want[1][1] ~= nil)
      m:close()
    end)

    it("run in parallel: 8 requests of 200 ms take about 200 ms, not 1.6 s", function()
      portal:fault { kind = "latency", delay = 0.2 }
      local m = core.multi { parallel = 8 }
      local t0 = socket.gettime()
      for id = 1, 8 do m:start(url, body(id)) end
      local got = drain(m)
      local elapsed = socket.gettime() - t0
      local n = 0
      for _, values in pairs(got) do
        n = n + 1
        assert.is_table(values[1])
      end
      assert.equal(8, n)
      assert.is_true(elapsed >= 0.2, "the latency fault was not applied: " .. elapsed)
      assert.is_true(elapsed < 1.0, "the requests were not in flight together: " .. elapsed)
      m:close()
    end)

    it("wait returns nothing when nothing finished in time, and at once when idle", function()
      local m = core.multi()
      assert.equal(0, select("#", m:wait(0)))
      local t0 = socket.gettime()
      assert.equal(0, select("#", m:wait(5)))
      assert.is_true(socket.gettime() - t0 < 1, "wait slept with nothing in flight")
      portal:fault { method = ITEMS, kind = "latency", delay = 0.5 }
      local ticket = m:start(url, body(1))
      assert.equal(0, select("#", m:wait(0)))
      assert.equal(0, select("#", m:wait(0.05)))
      assert.equal(1, m:in_flight())
      local got = drain(m)
      assert.is_table(got[ticket][1])
      m:close()
    end)

    it("gives each request its own timeout", function()
      portal:fault { method = ITEMS, kind = "latency", delay = 3 }
      local m = core.multi()
      local t0 = socket.gettime()
      local ticket = m:start(url, body(1), 0.3)
      local got = drain(m)
      assert.is_nil(got[ticket][1])
      assert.equal("TIMEOUT", got[ticket][2].code)
      assert.is_true(socket.gettime() - t0 < 2)
      m:close()
    end)
  end)

  describe("a failure in one request", function()
    -- Seven requests to items.get with 200 ms latency and one to fields
    -- with the fault: the seven come back as call gives them.
    local function one_fails(fault, timeout, check)
      local want = {}
      for id = 1, 7 do want[id] = expected(url, body(id)) end
      fault.method = FIELDS
      portal:fault(fault)
      portal:fault { method = ITEMS, kind = "latency", delay = 0.2 }
      local m = core.multi()
      local ids = {}
      for id = 1, 7 do ids[m:start(url, body(id))] = id end
      local bad = m:start(portal.webhook_url .. FIELDS, "{}", timeout)
      local got = drain(m)
      for ticket, id in pairs(ids) do assert.same(want[id], got[ticket], "request " .. id) end
      assert.is_nil(got[bad][1])
      check(got[bad])
      m:close()
    end

    it("html502 does not disturb the others", function()
      one_fails({ kind = "html502" }, nil, function(r) assert.equal(502, r[2].status) end)
    end)

    it("reset does not disturb the others", function()
      one_fails({ kind = "reset" }, nil, function(r) assert.equal("NETWORK_ERROR", r[2].code) end)
    end)

    it("truncate does not disturb the others", function()
      one_fails({ kind = "truncate" }, nil, function(r) assert.equal("NETWORK_ERROR", r[2].code) end)
    end)

    it("a timeout does not disturb the others", function()
      one_fails({ kind = "latency", delay = 3 }, 0.5, function(r) assert.equal("TIMEOUT", r[2].code) end)
    end)
  end)

  describe("abort", function()
    it("stops one request; wait never returns it; the pool still works", function()
      portal:fault { method = ITEMS, kind = "latency", delay = 0.3, times = 4 }
      local m = core.multi { parallel = 4 }
      local t = {}
      for id = 1, 4 do t[id] = m:start(url, body(id)) end
      assert.equal(0, select("#", m:wait(0.05)))
      assert.equal(1, m:abort(t[2]))
      assert.equal(0, m:abort(t[2]))
      assert.equal(3, m:in_flight())
      local got = drain(m)
      assert.is_nil(got[t[2]])
      for _, id in ipairs { 1, 3, 4 } do assert.is_table(got[t[id]][1]) end
      -- The freed easy handle takes the next request; all four answer right.
      local want, ids = {}, {}
      for id = 5, 8 do want[id] = expected(url, body(id)) end
      for id = 5, 8 do ids[m:start(url, body(id))] = id end
      got = drain(m)
      for ticket, id in pairs(ids) do assert.same(want[id], got[ticket]) end
      m:close()
    end)

    it("stops all; their connections are closed, not reused; no stale bytes after", function()
      portal:fault { method = ITEMS, kind = "latency", delay = 0.5, times = 8 }
      local m = core.multi()
      for id = 1, 8 do m:start(url, body(id)) end
      -- Let the requests reach the portal, then stop them half-read.
      local deadline = socket.gettime() + 5
      while #portal:requests() < 8 and socket.gettime() < deadline do m:wait(0.02) end
      assert.equal(8, #portal:requests())
      assert.equal(8, m:abort())
      assert.equal(0, m:in_flight())
      assert.equal(0, select("#", m:wait(0.7)))
      local aborted = conns_of(portal:requests())

      local want, ids = {}, {}
      for id = 1, 8 do want[id] = expected(url, body(id)) end
      portal:reset()
      for id = 1, 8 do ids[m:start(url, body(id))] = id end
      local got = drain(m)
      for ticket, id in pairs(ids) do assert.same(want[id], got[ticket]) end
      for _, r in ipairs(portal:requests()) do
        assert.is_nil(aborted[r.conn], "a connection left half-read was reused")
      end
      m:close()
    end)

    it("of a request whose answer has arrived drops that answer", function()
      local m = core.multi()
      local a = m:start(url, body(1))
      local b = m:start(url, body(3))
      local first = m:wait(5)
      assert.is_true(first == a or first == b)
      socket.sleep(0.2)   -- the other answer is in by now, not yet returned
      assert.equal(1, m:abort(first == a and b or a))
      assert.equal(0, m:in_flight())
      assert.equal(0, select("#", m:wait(0.1)))
      m:close()
    end)
  end)

  describe("close", function()
    it("with requests in flight frees everything; twice is fine; then it refuses", function()
      portal:fault { method = ITEMS, kind = "latency", delay = 0.5 }
      local m = core.multi()
      for id = 1, 8 do m:start(url, body(id)) end
      m:wait(0.05)
      m:close()
      m:close()
      assert.matches("closed", tostring(m))
      assert.has_error(function() m:start(url, body(1)) end)
      assert.has_error(function() m:wait(0) end)
      assert.has_error(function() m:in_flight() end)
      assert.has_error(function() m:abort() end)
    end)

    it("is what the collector runs on a forgotten multi with requests in flight", function()
      portal:fault { method = ITEMS, kind = "latency", delay = 0.5 }
      do
        local m = core.multi()
        for id = 1, 4 do m:start(url, body(id)) end
        m:wait(0.05)
      end
      collectgarbage()
      collectgarbage()
      assert.is_table((http:call(portal.webhook_url .. FIELDS, "{}")))
    end)
  end)

  describe("connections", function()
    it("are kept alive: 4 rounds of 8 requests use 8 connections", function()
      local m = core.multi()
      for _ = 1, 4 do
        portal:fault { method = ITEMS, kind = "latency", delay = 0.1, times = 8 }
        for id = 1, 8 do m:start(url, body(id)) end
        drain(m)
      end
      local stats = portal:stats()
      assert.equal(32, stats.requests)
      assert.equal(8, stats.connections)
      m:close()
    end)

    it("one after another use one connection", function()
      local m = core.multi()
      for id = 1, 5 do
        m:start(url, body(id))
        drain(m)
      end
      assert.equal(1, portal:stats().connections)
      m:close()
    end)

    it("fresh = true opens a new connection", function()
      local m = core.multi()
      m:start(url, body(1))
      drain(m)
      m:start(url, body(2), nil, true)
      drain(m)
      m:start(url, body(3), nil, false)
      drain(m)
      local log = portal:requests()
      assert.equal(3, #log)
      assert.not_equal(log[1].conn, log[2].conn)
      assert.equal(2, portal:stats().connections)
    end)
  end)

  describe("programmer errors", function()
    it("raise naming the argument, and change nothing", function()
      local m = core.multi { parallel = 2 }
      assert.has_error(function() m:start(nil, "{}") end)
      assert.has_error(function() m:start(url, nil) end)
      assert.has_error(function() m:start(url, "{}", 0) end, nil)
      assert.has_error(function() m:start(url, "{}", -1) end)
      assert.has_error(function() m:start(url, "{}", 1e9) end)
      assert.has_error(function() m:start(url, "{}", nil, "yes") end)
      assert.has_error(function() m:wait(-1) end)
      assert.has_error(function() m:wait("soon") end)
      assert.has_error(function() m:abort("x") end)
      assert.equal(0, m:in_flight())
      assert.equal(0, #portal:requests())
      local ok, err = pcall(m.start, m, url, "{}", 0)
      assert.is_false(ok)
      assert.matches("#4", err)
    end)

    it("refuse a request beyond parallel, keeping those in flight", function()
      local m = core.multi { parallel = 2 }
      local a, b = m:start(url, body(1)), m:start(url, body(3))
      local ok, err = pcall(m.start, m, url, body(4))
      assert.is_false(ok)
      assert.matches("in flight", err)
      assert.equal(2, m:in_flight())
      local got = drain(m)
      assert.is_table(got[a][1])
      assert.is_table(got[b][1])
      m:close()
    end)

    it("bad options raise before anything is made", function()
      assert.has_error(function() core.multi { parallel = 0 } end)
      assert.has_error(function() core.multi { parallel = 1.5 } end)
      assert.has_error(function() core.multi { parallel = 1000 } end)
      assert.has_error(function() core.multi { parallel = "8" } end)
      assert.has_error(function() core.multi { timeout = 0 } end)
      assert.has_error(function() core.multi(5) end)
    end)
  end)
end)
