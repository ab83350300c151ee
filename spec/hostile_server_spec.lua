-- Both transports against the same hostile HTTP server
-- (spec/hostile_server.lua): dripping, endless, truncated and malformed
-- answers. Every bound the README promises (timeout, deadline,
-- max_response) must hold under each, with the same error code as the
-- other transport; inside nginx the worker must also keep its memory
-- bounded and stay alive.

local support = require "support"
local socket = require "socket"
local bitrix24 = require "bitrix24"
local cjson = require "cjson"
local nginx = require "nginx_harness"
local child = require "child_server"

local SERVER_LIFETIME = 120   -- seconds; the hostile server stops by itself after that
local SLACK = 0.5             -- seconds a bounded call may take beyond its bound
local MAX_RSS_GROWTH = 64 * 1024   -- KiB the nginx worker may grow over the whole matrix

-- Each case: the server's behaviour, the client's options, the code the
-- call must end with (nil: it must succeed), and the bound it must end within.
local CASES = {
  { case = "fine", opts = { timeout = 1 }, bound = 1 },
  { case = "fine", opts = { timeout = 1, max_response = 64 }, code = "RESPONSE_TOO_LARGE", bound = 1 },
  { case = "silence", opts = { timeout = 0.5 }, code = "TIMEOUT", bound = 0.5 },
  { case = "drip_header", opts = { timeout = 0.5 }, code = "TIMEOUT", bound = 0.5 },
  { case = "drip_body", opts = { timeout = 0.5 }, code = "TIMEOUT", bound = 0.5 },
  -- The deadline cuts the attempt in flight, whatever `timeout` says.
  { case = "silence", opts = { timeout = 10, deadline = 0.5 }, code = "TIMEOUT", bound = 0.5 },
  { case = "drip_body", opts = { timeout = 10, deadline = 0.5 }, code = "TIMEOUT", bound = 0.5 },
  { case = "drip_header", opts = { timeout = 10, deadline = 0.5 }, code = "TIMEOUT", bound = 0.5 },
  -- Header lines are bounded whatever max_response allows.
  { case = "endless_status", opts = { timeout = 3 }, code = "NETWORK_ERROR", bound = 3, endless = true },
  { case = "endless_header", opts = { timeout = 3 }, code = "NETWORK_ERROR", bound = 3, endless = true },
  { case = "many_headers", opts = { timeout = 3 }, code = "RESPONSE_TOO_LARGE", bound = 3, endless = true },
  { case = "long_header_20k", opts = { timeout = 3 }, code = "NETWORK_ERROR", bound = 3,
    description = "a header line longer than 16 KiB" },
  { case = "long_header_150k", opts = { timeout = 3 }, code = "NETWORK_ERROR", bound = 3,
    description = "a header line longer than 16 KiB" },
  -- Header bytes count towards max_response.
  { case = "many_headers", opts = { timeout = 3, max_response = 65536 }, code = "RESPONSE_TOO_LARGE", bound = 3 },
  { case = "endless_body", opts = { timeout = 3, max_response = 1048576 }, code = "RESPONSE_TOO_LARGE",
    bound = 3, endless = true },
  { case = "endless_chunked", opts = { timeout = 3, max_response = 1048576 }, code = "RESPONSE_TOO_LARGE",
    bound = 3, endless = true },
  { case = "huge_chunk_size", opts = { timeout = 3 }, code = "NETWORK_ERROR", bound = 3, endless = true },
  { case = "endless_trailers", opts = { timeout = 3 }, code = "NETWORK_ERROR", bound = 3, endless = true },
  { case = "truncated", opts = { timeout = 3 }, code = "NETWORK_ERROR", bound = 3 },
  { case = "malformed_status", opts = { timeout = 3 }, code = "NETWORK_ERROR", bound = 3 },
  { case = "malformed_chunk", opts = { timeout = 3 }, code = "NETWORK_ERROR", bound = 3 },
  { case = "same_lengths", opts = { timeout = 3 }, bound = 3 },
  { case = "differing_lengths", opts = { timeout = 3 }, code = "NETWORK_ERROR", bound = 3 },
  { case = "continue", opts = { timeout = 3 }, bound = 3 },
}

local function title(c)
  local o = {}
  for _, k in ipairs { "timeout", "deadline", "max_response" } do
    if c.opts[k] then o[#o + 1] = k .. " = " .. c.opts[k] end
  end
  return c.case .. " (" .. table.concat(o, ", ") .. ") -> " .. (c.code or "success")
end

-- The outcome must be the case's: its code, within its bound.
local function check(c, ok, code, description, elapsed)
  local what = tostring(code) .. ": " .. tostring(description)
  if c.code then
    assert.is_false(ok, "the call succeeded")
    assert.equal(c.code, code, what)
    if c.description then assert.matches(c.description, tostring(description), 1, true) end
  else
    assert.is_true(ok, what)
  end
  assert.is_true(elapsed < c.bound + SLACK,
    string.format("took %.2f s, bound %g s (%s)", elapsed, c.bound, what))
end

-- Returns the server and its base URL.
local function start_server()
  local server = child.start("hostile_server.lua", SERVER_LIFETIME)
  return server, server.base
end

describe("hostile servers, curl transport", function()
  local server, base

  setup(function() server, base = start_server() end)
  teardown(function() child.stop(server) end)

  for _, c in ipairs(CASES) do
    it(title(c), function()
      local opts = { transport = "curl", tries = 1, rate_limit = false }
      for k, v in pairs(c.opts) do opts[k] = v end
      local client = bitrix24.webhook(base .. "/" .. c.case .. "/rest/1/abcdef/", opts)
      local started = socket.gettime()
      local result, err = client:call("crm.lead.contact.fields")
      local elapsed = socket.gettime() - started
      client:close()
      check(c, result ~= nil, err and err.code, err and err.description, elapsed)
    end)
  end
end)

-- core.multi reads answers through the same buffer as handle:call
-- (src/answer.c): the same cases end with the same codes. A client's
-- deadline becomes the request's own timeout here.
describe("hostile servers, core.multi", function()
  local core = require "bitrix24.core"
  local server, base

  setup(function() server, base = start_server() end)
  teardown(function() child.stop(server) end)

  for _, c in ipairs(CASES) do
    it(title(c), function()
      local m = core.multi { timeout = c.opts.timeout, max_response = c.opts.max_response }
      local started = socket.gettime()
      local ticket = m:start(base .. "/" .. c.case .. "/rest/1/abcdef/crm.lead.contact.fields", "{}",
        c.opts.deadline)
      local got, result, status_or_failure
      repeat got, result, status_or_failure = m:wait(c.bound + SLACK) until got or m:in_flight() == 0
      local elapsed = socket.gettime() - started
      m:close()
      assert.equal(ticket, got, "no answer within the bound")
      local failure = result == nil and status_or_failure or {}
      check(c, result ~= nil, failure.code, failure.description, elapsed)
    end)
  end
end)

-- Resident memory of this process in KiB.
local function rss_kib()
  return tonumber(support.read_file("/proc/self/status"):match("VmRSS:%s*(%d+)"))
end

-- Under a memory checker freed memory is held back (ASan's quarantine,
-- valgrind's own allocator): resident size says nothing there.
local function rss_tells()
  return os.getenv("ASAN_OPTIONS") == nil and not support.read_file("/proc/self/maps"):find("vgpreload", 1, true)
end

describe("core.multi's abort", function()
  local core = require "bitrix24.core"
  local server, base

  setup(function() server, base = start_server() end)
  teardown(function() child.stop(server) end)

  -- Resident memory says nothing under ASan or valgrind (their allocators
  -- keep what is freed, and ASan bounds a single allocation): there the
  -- abort path is covered by spec/multi_spec.lua and spec/leakcheck.lua.
  if not rss_tells() then
    pending("resident memory is not observable under ASan or valgrind")
    return
  end

  it("gives back the buffer of a large half-read answer at once", function()
    local m = core.multi { timeout = 10, max_response = 512 * 1024 * 1024 }
    local before = rss_kib()
    local ticket = m:start(base .. "/endless_body/rest/1/abcdef/crm.lead.contact.fields", "{}")
    -- Read until 32 MiB of the endless answer are in; bounded in time.
    local stop = socket.gettime() + 8
    while rss_kib() - before < 32 * 1024 and socket.gettime() < stop do
      assert.is_nil(m:wait(0.05), "the endless answer ended")
    end
    assert.is_true(rss_kib() - before >= 32 * 1024, "32 MiB of the answer never came in")
    assert.equal(1, m:abort(ticket))
    assert.equal(0, m:in_flight())
    local grown = rss_kib() - before
    assert.is_true(grown < 16 * 1024, string.format("still %d KiB more resident after the abort", grown))
    m:close()
  end)
end)

describe("the transport's per-call timeout", function()
  it("is refused unless a number of seconds, before anything is sent", function()
    local core = require "bitrix24.core"
    local h = core.http { timeout = 1 }
    for _, bad in ipairs { 0, -1, 0 / 0, 86401, "soon" } do
      assert.has_error(function() h:call("http://127.0.0.1:1/", "{}", bad) end)
    end
    h:close()
  end)
end)

describe("hostile servers, nginx transport #nginx", function()
  if not nginx.runs_here() then
    pending(nginx.PENDING)
    return
  end
  local server, base, ngx_server, worker, rss_before

  setup(function()
    server, base = start_server()
    ngx_server = nginx.start { ["/h"] = "spec/nginx/hostile_app.lua" }
    local t = cjson.decode(ngx_server:get("/h?url=" .. nginx.urlencode(base .. "/fine/rest/1/abcdef/")))
    worker = string.format("%d", t.pid)
    rss_before = nginx.rss_kib(worker)
  end)

  teardown(function()
    if ngx_server then ngx_server:stop() end
    child.stop(server)
  end)

  for _, c in ipairs(CASES) do
    it(title(c), function()
      local q = "/h?url=" .. nginx.urlencode(base .. "/" .. c.case .. "/rest/1/abcdef/")
      for k, v in pairs(c.opts) do q = q .. "&" .. k .. "=" .. v end
      local body = ngx_server:get(q, c.bound + 10)
      local ok, t = pcall(cjson.decode, body)
      assert(ok and type(t) == "table", "not an outcome: " .. body)
      check(c, t.ok, t.code, t.description, t.elapsed)
      assert.equal(worker, string.format("%d", t.pid), "the nginx worker changed: the old one crashed")
      if c.endless then
        local rss = nginx.rss_kib(worker)
        assert.is_true(rss - rss_before < MAX_RSS_GROWTH,
          string.format("the worker grew from %d KiB to %d KiB", rss_before, rss))
      end
    end)
  end
end)
