-- Many machines on one portal: the rate budget and the OAuth tokens shared
-- through a real redis-server (spec/redis_server.lua), several client
-- processes and the fake portal. "Machines" are processes here; what makes
-- them differ (their clocks) is faked with faketime.

local support = require "support"
local redis_server = require "redis_server"
local bitrix24 = require "bitrix24"
local socket = require "socket"

local ITEMS_GET = "crm.lead.contact.items.get"
local MARKER = "<!-- nginx.conf used by spec/redis_spec.lua -->"
-- The pacing runs against a bucket ten times faster than the portal's real
-- 2/s with the same ceiling in requests, as in limits_spec.lua.
local FAST_RATE, REAL_RATE, BURST = 20, 2, 10

local function statuses(portal)
  local count = {}
  for _, r in ipairs(portal:requests()) do
    if r.method ~= "oauth.token" then
      local s = string.format("%d", r.status)
      count[s] = (count[s] or 0) + 1
    end
  end
  return count
end

local function token_requests(portal) return support.count_requests(portal, "oauth.token") end

-- Seconds between the portal's first and last REST request.
local function span(portal)
  local first, last
  for _, r in ipairs(portal:requests()) do
    first, last = first or r.time, r.time
  end
  return last - first
end

-- The time the bucket needs for n requests: burst - 1 at once (one unit is
-- kept spare), then one per 1/rate s.
local function floor(n, rate)
  return (n - (BURST - 1)) / rate
end

-- Runs the commands at the same time; returns their output, in order.
local function run_all(dir, commands)
  local parts = {}
  for i, cmd in ipairs(commands) do
    parts[#parts + 1] = cmd .. " >" .. dir .. "/out" .. i .. " 2>&1 &"
  end
  support.run("(" .. table.concat(parts, " ") .. " wait)")
  local out = {}
  for i = 1, #commands do out[i] = support.read_file(dir .. "/out" .. i) end
  return out
end

describe("many machines through Redis #redis", function()
  local portal, server, dir

  setup(function()
    portal = support.start_portal { tls = false, rate = FAST_RATE, burst = BURST }
    server = redis_server.start()
    dir = support.tmpdir()
  end)

  teardown(function()
    if portal then portal:stop() end
    if server then server:remove() end
    support.remove_dir(dir)
  end)

  before_each(function()
    portal:reset()
    server:cli("FLUSHALL")
    server:cli("CONFIG RESETSTAT")
  end)

  -- The commands clients sent Redis since the test began, by name: the
  -- spec's own CONFIG and INFO, and what the budget's script runs inside
  -- Redis, left out.
  local INSIDE = { info = true, time = true, hmget = true, hset = true, hget = true, pexpire = true }
  local function commands()
    local out = {}
    for name, n in server:cli("INFO commandstats"):gmatch("cmdstat_([^:]+):calls=(%d+)") do
      if not name:match("^config") and not INSIDE[name] then out[name] = tonumber(n) end
    end
    return out
  end

  -- A job fetching the contacts of leads arg[1] .. arg[2], paced by `budget`
  -- (Lua source), printing OK or the error.
  local function job(name, budget, rate)
    return support.write_script(dir .. "/" .. name .. ".lua", redis_server.PRELUDE .. ([[
      local bitrix24 = require "bitrix24"
      local client = bitrix24.webhook(%q, { rate = %d, burst = %d, tries = 1, budget = %s })
      local ids = {}
      for i = tonumber(arg[1]), tonumber(arg[2]) do ids[#ids + 1] = i end
      local rows, err = client:lead_contacts(ids)
      print(rows and "OK" or ("FAIL " .. tostring(err)))
    ]]):format(portal.webhook_url, rate or FAST_RATE, BURST, budget))
  end

  local function three(script, faked)
    local lua = support.LUA .. " " .. script
    return run_all(dir, { lua .. " 1 700", lua .. " 701 1350", (faked or "") .. lua .. " 1351 2000" })
  end

  it("without a shared budget, three processes meet 503 (the check can fail)", function()
    local out = three(job("alone", "nil"))
    assert.is_true((statuses(portal)["503"] or 0) > 0, table.concat(out))
  end)

  it("three processes on one Redis budget, one with its clock 5 minutes ahead: no 503, at the bucket's pace",
    function()
      local script = job("shared", ("bitrix24.redis_budget(%q)"):format(server:url()))
      local out = three(script, "faketime -f '+5m' ")
      assert.same({ "OK\n", "OK\n", "OK\n" }, out)
      assert.same({ ["200"] = 40 }, statuses(portal))
      -- One round trip per request: the reservation (and the script's
      -- SHA1 once per process).
      assert.same({ evalsha = 40, ["script|load"] = 3 }, commands())
      local took, least = span(portal), floor(40, FAST_RATE)
      -- Paced (not faster than the bucket), and not slowed by Redis: within
      -- 10% of the floor, plus one request's worth for process start-up.
      assert.is_true(took >= least - 1 / FAST_RATE, "took " .. took .. " s")
      assert.is_true(took <= 1.1 * least, "took " .. took .. " s")
      -- The bucket is in Redis, and leaves no key behind for ever.
      local key = "bitrix24:budget:" .. portal.url
      assert.matches("^%d+", server:cli("TTL " .. key))
      assert.is_true(tonumber(server:cli("TTL " .. key)) > 0)
    end)

  it("the process under faketime does see a clock 5 minutes ahead", function()
    local script = support.write_script(dir .. "/clock.lua", "print(require('bitrix24.core').now())")
    local out = run_all(dir, { support.LUA .. " " .. script, "faketime -f '+5m' " .. support.LUA .. " " .. script })
    local diff = tonumber(out[2]) - tonumber(out[1])
    assert.is_true(diff > 290 and diff < 310, "the clocks differ by " .. diff .. " s")
  end)

  it("shares the methods' operating times through the reservations", function()
    local a = bitrix24.webhook(portal.webhook_url, { rate = 1000, burst = 100000, budget = bitrix24.redis_budget(server:url()) })
    local b = bitrix24.webhook(portal.webhook_url, { rate = 1000, burst = 100000, budget = bitrix24.redis_budget(server:url()) })
    assert(a:call(ITEMS_GET, { id = 1 }))
    assert(a:call(ITEMS_GET, { id = 2 }))   -- carries the first answer's operating time to Redis
    assert.is_nil(b._limiter.operating[ITEMS_GET])
    assert(b:call(ITEMS_GET, { id = 3 }))   -- its reservation brings it back
    local op = b._limiter.operating[ITEMS_GET]
    assert.is_table(op)
    assert.is_number(op.reset_at)
    assert.matches("^[%d.e+-]+ [%d.e+-]+%s*$", server:cli(("HGET bitrix24:operating:%s %s"):format(portal.url, ITEMS_GET)))
    a:close()
    b:close()
  end)

  describe("when Redis goes away", function()
    it("goes on with the local budget, says so once, and shares again when Redis is back", function()
      local reports = {}
      local budget = bitrix24.redis_budget { url = server:url(), retry_after = 0.3, connect_timeout = 0.5,
        read_timeout = 0.5, report = function(t) reports[#reports + 1] = t end }
      local client = bitrix24.webhook(portal.webhook_url, { rate = 1000, burst = 100000, budget = budget })
      local key = "bitrix24:budget:" .. portal.url
      assert(client:call(ITEMS_GET, { id = 1 }))
      assert.equal("1", server:cli("EXISTS " .. key):match("%d"))
      server:stop()
      for i = 1, 5 do
        local t0 = socket.gettime()
        assert(client:call(ITEMS_GET, { id = i }))
        assert.is_true(socket.gettime() - t0 < 1, "a call took " .. socket.gettime() - t0 .. " s")
      end
      assert.equal(1, #reports)
      assert.matches("own budget", reports[1])
      server:start()
      socket.sleep(0.35)
      assert(client:call(ITEMS_GET, { id = 1 }))
      assert.equal("1", server:cli("EXISTS " .. key):match("%d"))
      assert.equal(2, #reports)
      assert.matches("shared again", reports[2])
      client:close()
    end)

    it("fails with BUDGET_ERROR instead when budget_fallback = false, without a hang", function()
      local budget = bitrix24.redis_budget { url = server:url(), budget_fallback = false, retry_after = 0.3,
        connect_timeout = 0.5, read_timeout = 0.5 }
      local client = bitrix24.webhook(portal.webhook_url, { rate = 1000, burst = 100000, budget = budget })
      assert(client:call(ITEMS_GET, { id = 1 }))
      server:stop()
      local t0 = socket.gettime()
      local rows, err = client:call(ITEMS_GET, { id = 1 })
      assert.is_nil(rows)
      assert.equal("BUDGET_ERROR", err.code)
      assert.matches("127.0.0.1:" .. server.port, err.description, 1, true)
      assert.is_true(socket.gettime() - t0 < 1.5)
      assert.same({}, statuses(portal)["503"] and {} or {})
      server:start()
      socket.sleep(0.35)
      assert(client:call(ITEMS_GET, { id = 2 }))
      client:close()
    end)
  end)

  describe("the OAuth tokens", function()
    before_each(function() portal:reset { tokens = true } end)

    it("one token request when three processes see the expiry at once; all calls succeed", function()
      local cfg = support.oauth_config(portal)
      -- Seeds the store with the current tokens.
      local seeded = bitrix24.oauth(support.oauth_config(portal, { store = bitrix24.redis_store(server:url(), "app") }),
        support.opts())
      seeded:close()
      portal:expire_tokens()
      local script = support.write_script(dir .. "/refresh.lua", redis_server.PRELUDE .. ([[
        local bitrix24 = require "bitrix24"
        local client = bitrix24.oauth({ endpoint = %q, token_url = %q, access_token = %q, refresh_token = %q,
          client_id = %q, client_secret = %q, store = bitrix24.redis_store(%q, "app") },
          { rate = 1000, burst = 100000, tries = 1 })
        local rows, err = client:call(%q, { id = 1 })
        print(rows and "OK" or ("FAIL " .. tostring(err)))
      ]]):format(cfg.endpoint, cfg.token_url, cfg.access_token, cfg.refresh_token, cfg.client_id, cfg.client_secret,
        server:url(), ITEMS_GET))
      local lua = support.LUA .. " " .. script
      local out = run_all(dir, { lua, lua, "faketime -f '+5m' " .. lua })
      assert.same({ "OK\n", "OK\n", "OK\n" }, out)
      assert.equal(1, token_requests(portal))
      -- The store has the rotated pair.
      local stored = require("cjson").decode(server:cli("GET bitrix24:tokens:app"))
      assert.equal(portal:info().refresh_token, stored.refresh_token)
      assert.is_nil(server:cli("EXISTS bitrix24:tokens:app:lock"):match("1"))
    end)

    it("refreshes when Redis is down: on_refresh gets the tokens, the call says STORE_ERROR", function()
      local seen = {}
      local client = bitrix24.oauth(support.oauth_config(portal, {
        store = bitrix24.redis_store({ url = server:url(), retry_after = 0.3, connect_timeout = 0.5 }, "down"),
        on_refresh = function(t) seen[#seen + 1] = t end,
      }), support.opts())
      server:stop()
      portal:expire_tokens()
      local rows, err = client:call(ITEMS_GET, { id = 1 })
      assert.is_nil(rows)
      assert.equal("STORE_ERROR", err.code)
      assert.matches("Redis", err.description)
      assert.equal(1, #seen)
      assert.equal(portal:info().refresh_token, seen[1].refresh_token)
      -- The client kept them: the next call works without another refresh.
      assert(client:call(ITEMS_GET, { id = 1 }))
      assert.equal(1, token_requests(portal))
      server:start()
      socket.sleep(0.35)   -- (this process rests the address for retry_after)
      client:close()
    end)

    it("a save never overwrites newer tokens stored while this machine's lock had expired", function()
      local store = bitrix24.redis_store(server:url(), "cas")
      local unlock = assert(store.lock())
      assert.is_nil(store.load())
      -- Another machine, its lock taken after ours expired, saves first.
      server:cli("SET bitrix24:tokens:cas '{\"access_token\":\"newer\"}'")
      local ok, err = store.save(nil, { access_token = "older" })
      unlock()
      assert.is_nil(ok)
      assert.matches("newer tokens", err)
      assert.equal("newer", store.load().access_token)
      -- Its lock is released only by its owner.
      local unlock2 = assert(store.lock())
      server:cli("SET bitrix24:tokens:cas:lock someone-else")
      unlock2()
      assert.equal("someone-else", server:cli("GET bitrix24:tokens:cas:lock"):gsub("%s+$", ""))
    end)
  end)

  describe("with authentication", function()
    local function works_with(srv, url)
      local budget = bitrix24.redis_budget { url = url, budget_fallback = false }
      local client = bitrix24.webhook(portal.webhook_url, { rate = 1000, burst = 100000, budget = budget })
      assert(client:call(ITEMS_GET, { id = 1 }))
      client:close()
      assert.equal("1", srv:cli("-n 2 EXISTS bitrix24:budget:" .. portal.url):match("%d"))
      local store = bitrix24.redis_store(url, "auth")
      local unlock = assert(store.lock())
      assert(store.save(nil, { access_token = "x" }))
      unlock()
      assert.equal("x", store.load().access_token)
    end

    local function refused(srv, url, secret)
      srv:cli("FLUSHALL")
      local budget = bitrix24.redis_budget { url = url, budget_fallback = false }
      local client = bitrix24.webhook(portal.webhook_url, { rate = 1000, burst = 100000, budget = budget })
      local rows, err = client:call(ITEMS_GET, { id = 1 })
      client:close()
      assert.is_nil(rows)
      assert.equal("BUDGET_ERROR", err.code)
      assert.matches("refused the login", err.description)
      assert.is_nil(err.description:find(secret, 1, true))
      assert.is_nil(tostring(err):find(secret, 1, true))
      assert.equal("0", srv:cli("-n 2 DBSIZE"):match("%d"))
    end

    it("a password (requirepass)", function()
      local srv = redis_server.start { password = "s3cret-pw" }
      local ok, err = pcall(function()
        works_with(srv, srv:url(2))
        refused(srv, "redis://:wrong-pw-123@127.0.0.1:" .. srv.port .. "/2", "wrong-pw-123")
      end)
      srv:remove()
      assert(ok, err)
    end)

    it("an ACL user", function()
      local srv = redis_server.start { user = "b24", password = "acl-pw" }
      local ok, err = pcall(function()
        works_with(srv, srv:url(2))
        refused(srv, "redis://b24:nope-pw-456@127.0.0.1:" .. srv.port .. "/2", "nope-pw-456")
      end)
      srv:remove()
      assert(ok, err)
    end)
  end)

  describe("configuration", function()
    it("raises on a bad config without repeating its password", function()
      local ok, err = pcall(bitrix24.redis_budget, "redis://:pw-xyz@host:port:bad")
      assert.is_false(ok)
      assert.matches("config.url", tostring(err))
      assert.is_nil(tostring(err):find("pw-xyz", 1, true))
      assert.has_error(function() bitrix24.redis_budget { host = 1 } end)
      assert.has_error(function() bitrix24.redis_store { read_timeout = 0 } end)
      assert.has_error(function() bitrix24.redis_store { colour = "red" } end)
    end)

    it("loads without a Redis library, and names the Debian package when one is needed", function()
      local script = support.write_script(dir .. "/nolib.lua", [[
        package.path = package.path:gsub("[^;]*/usr/share/lua/[^;]*;?", "")
        package.preload.redis = function() error("not installed") end
        local bitrix24 = require "bitrix24"
        print(bitrix24.webhook ~= nil)
        print(select(2, pcall(bitrix24.redis_budget, "redis://127.0.0.1:1/0")))
      ]])
      local out = support.run(support.LUA .. " " .. script)
      assert.matches("^true\n", out)
      assert.matches("lua-redis", out, 1, true)
    end)
  end)
end)

-- A script fetching the contacts of leads arg[1]..arg[2] on the Redis
-- budget (rate, BURST); prints OK or FAIL and why. Returns the command.
local function budget_job(dir, portal, server, rate)
  local script = support.write_script(dir .. "/job.lua", redis_server.PRELUDE .. ([[
    local bitrix24 = require "bitrix24"
    local client = bitrix24.webhook(%q, { rate = %d, burst = %d, tries = 1,
      budget = bitrix24.redis_budget(%q) })
    local ids = {}
    for i = tonumber(arg[1]), tonumber(arg[2]) do ids[#ids + 1] = i end
    local rows, err = client:lead_contacts(ids)
    print(rows and "OK" or ("FAIL " .. tostring(err)))
  ]]):format(portal.webhook_url, rate, BURST, server:url()))
  return support.LUA .. " " .. script
end

-- README's nginx.conf for many machines, as nginx_harness runs it: only the
-- install paths, the workers, the port and the bucket replaced, the
-- harness's own lines (pid, logs, modules, temporary files) added.
local function readme_config(harness, root, port, prefix)
  local block = harness.doc_block("docs/many-machines.md", MARKER)
  local function replace(old, new) block = harness.replace(block, old, new) end
  replace("/usr/local/share/lua/5.1/", root .. "/lua/")
  replace("/usr/local/lib/lua/5.1/", root .. "/build/luajit/")
  replace("worker_processes auto;", "worker_processes 2;")
  replace("listen 8080;", "listen 127.0.0.1:" .. port .. ";")
  replace("rate = 2, burst = 50", ("rate = %d, burst = %d"):format(FAST_RATE, BURST))
  replace("http {", "http {\n    " .. table.concat(harness.http_lines(prefix), "\n    "))
  -- The harness's main lines without its worker count and events block:
  -- the README has its own.
  local main = harness.main_lines(prefix, 256):gsub("worker_processes [^\n]*\n", ""):gsub("events {[^\n]*", "")
  return main .. "\n" .. block
end

describe("many machines through Redis: nginx #redis #nginx", function()
  local harness = require "nginx_harness"
  if not harness.runs_here() then
    pending(harness.PENDING)
    return
  end
  local portal, server, nginx, dir

  setup(function()
    portal = support.start_portal { tls = false, rate = FAST_RATE, burst = BURST }
    server = redis_server.start()
    dir = support.tmpdir()
    local root, port = harness.root(), harness.free_port()
    nginx = harness.launch(port, function(prefix) return readme_config(harness, root, port, prefix) end,
      { BITRIX24_WEBHOOK_URL = portal.webhook_url, BITRIX24_REDIS_URL = server:url() })
  end)

  before_each(function() portal:reset() end)

  teardown(function()
    if nginx then nginx:stop() end
    if portal then portal:stop() end
    if server then server:remove() end
    support.remove_dir(dir)
  end)

  it("README's nginx (two workers) and three processes on one Redis budget: no 503, at the bucket's pace", function()
    local lua = budget_job(dir, portal, server, FAST_RATE)
    local function get(from, to)
      return "curl -s -w ' %{http_code}' '" .. nginx.base .. "/lead-contacts?from=" .. from .. "&to=" .. to .. "'"
    end
    local out = run_all(dir, { lua .. " 1 400", lua .. " 401 800", lua .. " 801 1200", get(1201, 1600),
      get(1601, 2000) })
    assert.same({ "OK\n", "OK\n", "OK\n", "400\n 200", "400\n 200" }, out)
    assert.same({ ["200"] = 40 }, statuses(portal))
    local took, least = span(portal), floor(40, FAST_RATE)
    assert.is_true(took >= least - 1 / FAST_RATE and took <= 1.1 * least, "took " .. took .. " s")
    -- The workers used Redis, not their fallback.
    local log = support.read_file(nginx.prefix .. "/error.log")
    assert.is_nil(log:find("own budget", 1, true), log)
  end)

  it("with Redis stopped, the workers go on with the shared dict and log it once each", function()
    server:stop()
    local ok, err = pcall(function()
      for i = 1, 4 do assert.equal("50\n", nginx:get("/lead-contacts?from=" .. i * 50 .. "&to=" .. i * 50 + 49)) end
    end)
    server:start()
    assert(ok, err)
    local _, said = support.read_file(nginx.prefix .. "/error.log"):gsub("own budget", "")
    assert.is_true(said >= 1 and said <= 2, "logged " .. said .. " times")
    assert.same({ ["200"] = 4 }, statuses(portal))
  end)
end)

describe("many machines through Redis at the real 2 requests/s #redis #slow", function()
  local portal, server, dir

  setup(function()
    portal = support.start_portal { tls = false, rate = REAL_RATE, burst = BURST }
    server = redis_server.start()
    dir = support.tmpdir()
  end)

  teardown(function()
    if portal then portal:stop() end
    if server then server:remove() end
    support.remove_dir(dir)
  end)

  it("three processes on one Redis budget: no 503, within 10% of the bucket's floor", function()
    local lua = budget_job(dir, portal, server, REAL_RATE)
    local out = run_all(dir, { lua .. " 1 700", lua .. " 701 1350", "faketime -f '+5m' " .. lua .. " 1351 2000" })
    assert.same({ "OK\n", "OK\n", "OK\n" }, out)
    assert.same({ ["200"] = 40 }, statuses(portal))
    local took, least = span(portal), floor(40, REAL_RATE)
    assert.is_true(took >= least - 1 / REAL_RATE and took <= 1.1 * least, "took " .. took .. " s")
  end)
end)
