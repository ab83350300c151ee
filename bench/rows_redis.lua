-- Rows 8a-8b of `make bench`: the rate budget shared through Redis (issue 17).
-- Called by bench/run.lua with its context (see `ctx` there). Each row
-- starts its own redis-server on a free loopback port in a temporary folder
-- (spec/redis_server.lua) and stops it; the nginx of 8b is the one
-- docs/many-machines.md shows, launched by spec/nginx_harness.lua. Those
-- spec helpers are plain Lua: the bench needs no busted.
--
--   8a  the cost of a reservation per call: Redis on loopback beside the
--       in-process bucket and the file budget (bench/redis.lua), and the
--       Redis commands an HTTP request costs, counted by redis-server
--   8b  four plain-Lua processes and that nginx (two workers) on one Redis
--       budget: the contacts of 2,000 leads against the fake portal's
--       bucket, against the bucket's floor

local fake = require "bitrix24.fake.server"

local ITEMS_GET = "crm.lead.contact.items.get"
local MARKER = "<!-- nginx.conf used by spec/redis_spec.lua -->"

-- What the budget's script runs inside Redis: INFO commandstats counts
-- those too, but they cost no round trip.
local INSIDE = { time = true, hmget = true, hset = true, hget = true, pexpire = true }

return function(B)
  local q = B.L.quote
  -- 8a: reservations timed, HTTP calls counted. 8b: the bucket is 2/s as
  -- on the standard plan, with a ceiling of 10 rather than 50 so that it
  -- binds (at 50, 40 requests would all fit the burst); smoke runs the
  -- same 40 requests ten times faster (floor 1.5 s).
  local N = B.SMOKE and { rounds = 1, reservations = 500, calls = 20, leads = 2000, rate = 20, burst = 10 }
    or { rounds = 5, reservations = 5000, calls = 300, leads = 2000, rate = 2, burst = 10 }

  local function spec_helpers()
    if not package.path:find(B.root .. "/spec/?.lua", 1, true) then
      package.path = B.root .. "/spec/?.lua;" .. package.path
    end
    return require "redis_server", require "nginx_harness"
  end

  -- Runs fn(server) with a fresh redis-server, stopping it whatever happens.
  local function with_redis(fn)
    local redis_server = spec_helpers()
    local server = redis_server.start()
    local ok, err = pcall(fn, server)
    server:remove()
    if not ok then error(err, 0) end
  end

  -- The commands clients sent since CONFIG RESETSTAT, by name (the bench's
  -- own INFO and CONFIG left out).
  local function commands(server)
    local out, total = {}, 0
    for name, n in server:cli("INFO commandstats"):gmatch("cmdstat_([^:]+):calls=(%d+)") do
      if not (INSIDE[name] or name == "info" or name:match("^config")) then
        out[name] = tonumber(n)
        total = total + tonumber(n)
      end
    end
    return out, total
  end

  local function list(counts)
    local names = {}
    for k in pairs(counts) do names[#names + 1] = k end
    table.sort(names)
    for i, k in ipairs(names) do names[i] = string.format("%s %d", k:upper(), counts[k]) end
    return table.concat(names, ", ")
  end

  -- A child script loading this checkout's modules and core, and
  -- lua-redis (under 5.4 from Debian's 5.3 folder).
  local function script(name, body)
    local redis_server = spec_helpers()
    local path = B.tmp .. "/" .. name
    B.L.write_file(path, ("package.path = %q .. package.path\npackage.cpath = %q .. package.cpath\n"):format(
      B.root .. "/lua/?.lua;", B.root .. "/build/" .. B.LUA_VERSION .. "/?.so;") .. redis_server.PRELUDE .. body)
    return B.LUA .. " " .. q(path)
  end

  B.bench("8a", "Redis budget: cost per call, round trips per HTTP request", function()
    -- A few runs, each after the machine quietens: the median of each.
    local runs = { mem = {}, file = {}, redis = {} }
    for i = 1, N.rounds do
      B.wait_quiet()
      local out = B.run(string.format("cd %s && LUA_VERSION=%s %s bench/redis.lua %d", q(B.root), B.LUA_VERSION,
        B.LUA, N.reservations))
      local function us(label)
        local v = tonumber(out:match("| " .. label:gsub("%p", "%%%0") .. "[^|]*| ([%d%.]+) |"))
        if not v then error("bench/redis.lua printed no figure for " .. label .. ":\n" .. out, 0) end
        return v
      end
      runs.mem[i], runs.file[i], runs.redis[i] = us("in-process bucket"), us("file budget"),
        us("Redis budget on loopback")
      B.log("   run %d: memory %.1f us, file %.1f us, Redis %.1f us", i, runs.mem[i], runs.file[i], runs.redis[i])
    end
    local mem, file, redis = B.L.median(runs.mem), B.L.median(runs.file), B.L.median(runs.redis)
    local function each(t)
      local out = {}
      for i, v in ipairs(t) do out[i] = string.format("%.1f", v) end
      return table.concat(out, ", ")
    end

    -- The round trips: N.calls HTTP requests by one process on the Redis
    -- budget (no fallback: a Redis failure shows as a failed call).
    local job = script("redis_calls.lua", ([[
      local bitrix24 = require "bitrix24"
      local client = bitrix24.webhook(arg[1], { rate = 1000, burst = 100000, tries = 1,
        budget = bitrix24.redis_budget { url = arg[2], budget_fallback = false } })
      local ok = 0
      for i = 1, tonumber(arg[3]) do
        if client:call(%q, { id = 1 }) then ok = ok + 1 end
      end
      print("ok=" .. ok)
    ]]):format(ITEMS_GET))
    local portal = fake.start { tls = false, rate = 0, op_cost = 0, op_limit = 1e9, timeout = 900 }
    local counts, total, requests, answered
    local ok, err = pcall(with_redis, function(server)
      server:cli("CONFIG RESETSTAT")
      answered = B.kv(B.run(string.format("%s %s %s %d", job, q(portal.webhook_url), q(server:url()), N.calls)), "ok")
      counts, total = commands(server)
      requests = math.floor(portal:stats().requests)
    end)
    portal:stop()
    if not ok then error(err, 0) end
    if answered ~= N.calls then error(string.format("%d of %d calls answered", answered or -1, N.calls), 0) end
    local evalsha, loads = counts.evalsha or 0, counts["script|load"] or 0
    -- One EVALSHA a request, and one SCRIPT LOAD for the process: nothing else.
    local setup = total - evalsha
    B.add_row { id = "8a", name = "Redis budget on loopback: us per call beside the in-process bucket and the "
        .. "file budget; Redis round trips per HTTP request",
      measured = string.format("%.1f us (memory %.1f us, file %.1f us); %.2f round trips a request "
        .. "(%d EVALSHA for %d requests, + %d SCRIPT LOAD)", redis, mem, file, evalsha / requests, evalsha, requests,
        loads),
      target = "<= 1 round trip a request (+ SCRIPT LOAD once a process); us reported",
      met = evalsha <= requests and loads <= 1 and setup == loads }
    B.detail("Row 8a: bench/redis.lua %d (reservations only, no HTTP, the bucket never waits), median of %d "
      .. "runs: in-process %.1f us, file budget %.1f us, Redis on loopback %.1f us a reservation (runs: %s / %s / "
      .. "%s). Then %d client:call's by one process on the Redis budget against the fake portal: %d HTTP "
      .. "requests; redis-server's INFO commandstats (commands run inside the script left out): %s.",
      N.reservations, N.rounds, mem, file, redis, each(runs.mem), each(runs.file), each(runs.redis), N.calls,
      requests, list(counts))
  end)

  -- docs/many-machines.md's nginx.conf as spec/redis_spec.lua runs it: only
  -- the install paths, the workers (2), the port and the bucket replaced,
  -- the harness's own lines (pid, logs, modules, temporary files) added.
  local function docs_config(harness, root, port, prefix)
    local doc = B.L.read_file(B.root .. "/docs/many-machines.md") or ""
    local at = assert(doc:find(MARKER, 1, true), "docs/many-machines.md has no line " .. MARKER)
    local block = assert(doc:match("^%s*```nginx\n(.-)\n```", at + #MARKER), "no ```nginx block after " .. MARKER)
    local function replace(old, new)
      local a, b = block:find(old, 1, true)
      assert(a, "docs/many-machines.md's nginx.conf lost " .. old)
      block = block:sub(1, a - 1) .. new .. block:sub(b + 1)
    end
    replace("/usr/local/share/lua/5.1/", root .. "/lua/")
    replace("/usr/local/lib/lua/5.1/", root .. "/build/luajit/")
    replace("worker_processes auto;", "worker_processes 2;")
    replace("listen 8080;", "listen 127.0.0.1:" .. port .. ";")
    replace("rate = 2, burst = 50", ("rate = %g, burst = %d"):format(N.rate, N.burst))
    replace("http {", "http {\n    " .. table.concat(harness.http_lines(prefix), "\n    "))
    local main = harness.main_lines(prefix, 256):gsub("worker_processes [^\n]*\n", ""):gsub("events {[^\n]*", "")
    return main .. "\n" .. block
  end

  B.bench("8b", "four processes and an nginx on one Redis budget", function()
    local _, harness = spec_helpers()
    local portal = fake.start { tls = false, rate = N.rate, burst = N.burst, timeout = 900 }
    local nginx, r
    local ok, err = pcall(with_redis, function(server)
      local root, port = harness.root(), harness.free_port()
      nginx = harness.launch(port, function(prefix) return docs_config(harness, root, port, prefix) end,
        { BITRIX24_WEBHOOK_URL = portal.webhook_url, BITRIX24_REDIS_URL = server:url() })
      server:cli("CONFIG RESETSTAT")
      local job = script("redis_job.lua", ([[
        local bitrix24 = require "bitrix24"
        local client = bitrix24.webhook(arg[1], { rate = %g, burst = %d, tries = 1,
          budget = bitrix24.redis_budget(arg[2]) })
        local ids = {}
        for i = tonumber(arg[3]), tonumber(arg[4]) do ids[#ids + 1] = i end
        local rows, err = client:lead_contacts(ids)
        print(rows and "OK" or ("FAIL " .. tostring(err)))
      ]]):format(N.rate, N.burst))
      -- Four fifths of the leads to the four processes, a fifth to nginx
      -- in two requests (one for each worker, as the accept lock allows).
      local quarter, tenth = math.floor(N.leads / 5), math.floor(N.leads / 10)
      local cmds, expect = {}, {}
      for p = 0, 3 do
        cmds[#cmds + 1] = string.format("%s %s %s %d %d", job, q(portal.webhook_url), q(server:url()),
          p * quarter + 1, (p + 1) * quarter)
        expect[#cmds] = "OK\n"
      end
      for w = 0, 1 do
        local from = 4 * quarter + w * tenth + 1
        cmds[#cmds + 1] = string.format("curl -s -m 300 -w ' %%{http_code}' %s", q(string.format(
          "%s/lead-contacts?from=%d&to=%d", nginx.base, from, from + tenth - 1)))
        expect[#cmds] = tenth .. "\n 200"
      end
      local parts = {}
      for i, c in ipairs(cmds) do parts[i] = string.format("%s >%s/redis_out%d 2>&1 &", c, q(B.tmp), i) end
      local core = require "bitrix24.core"
      local t0 = core.monotonic()
      B.run("(" .. table.concat(parts, " ") .. " wait)")
      local wall = core.monotonic() - t0
      local bad = {}
      for i = 1, #cmds do
        local got = B.L.read_file(B.tmp .. "/redis_out" .. i) or ""
        if got ~= expect[i] then bad[#bad + 1] = string.format("client %d: %q", i, got:sub(1, 300)) end
      end
      local log = nginx:error_log()
      local _, fallbacks = log:gsub("own budget", "")
      local counts, total = commands(server)
      local stats = portal:stats()
      local first, last
      for _, rq in ipairs(portal:requests()) do first, last = first or rq.time, rq.time end
      r = { wall = wall, bad = bad, fallbacks = fallbacks, counts = counts, total = total,
        requests = math.floor(stats.requests), rejected = math.floor(stats.by_status["503"] or 0),
        span = (last or 0) - (first or 0), log = log }
    end)
    if nginx then nginx:stop() end
    portal:stop()
    if not ok then error(err, 0) end
    if #r.bad > 0 then
      error("clients failed: " .. table.concat(r.bad, "; ") .. "\nnginx error.log:\n" .. r.log:sub(-1500), 0)
    end
    local ideal = math.ceil(N.leads / 50)
    -- The least the portal allows: the burst at once, the rest at its rate.
    local floor = math.max(0, (r.requests - N.burst) / N.rate)
    local ratio = r.wall / floor
    local evalsha, loads = r.counts.evalsha or 0, r.counts["script|load"] or 0
    B.add_row { id = "8b", name = string.format("4 Lua processes + nginx (2 workers) on one Redis budget: contacts "
        .. "of %s leads, bucket %g/s ceiling %d", B.fmt_int(N.leads), N.rate, N.burst),
      measured = string.format("%d requests, %d x 503, %.1f s (%.3fx the floor %.1f s); %d EVALSHA + %d SCRIPT LOAD",
        r.requests, r.rejected, r.wall, ratio, floor, evalsha, loads),
      target = string.format("%d requests, zero 503, <= 1.1x (requests - %d) / %g s; one EVALSHA a request",
        ideal, N.burst, N.rate),
      -- SCRIPT LOAD: once for each of the 4 processes and 2 workers at most.
      met = r.requests == ideal and r.rejected == 0 and ratio <= 1.1 and r.fallbacks == 0 and evalsha == r.requests
        and loads <= 6 and r.total == evalsha + loads }
    B.detail("Row 8b: leads split 4 x %s over plain-Lua processes and 2 x %s over GET /lead-contacts of "
      .. "docs/many-machines.md's nginx.conf (2 workers), all started at once; wall from the launch to the last "
      .. "answer %.2f s, the portal's first to last request %.2f s (by nginx's cached clock, to the ms); "
      .. "floor (requests - ceiling) / rate = "
      .. "(%d - %d) / %g = %.1f s. redis-server's INFO commandstats: %s (%d round trips for %d requests); "
      .. "nginx's fallback to its own budget: %d times.", B.fmt_int(math.floor(N.leads / 5)),
      B.fmt_int(math.floor(N.leads / 10)), r.wall, r.span, r.requests, N.burst, N.rate, floor, list(r.counts),
      r.total, r.requests, r.fallbacks)
  end)
end
