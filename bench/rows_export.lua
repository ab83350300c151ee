-- Rows 7a-7j of `make bench`: exports (issue 16), this client beside
-- today's way and beside two npm packages. Called by bench/run.lua with its
-- context (see `ctx` there).
--
-- Two fake portals over HTTPS (b24jssdk refuses http; everyone uses the
-- same URL), both holding the same generated leads:
--   count: no latency, no bucket: requests and the export's correctness
--          (every id once, ascending), and memory;
--   wall:  `latency` a request, `call_cost` a method call (each sub-call
--          too), the standard bucket: wall time against the floor.
-- A contender whose full export cannot take less than `max_floor` seconds
-- at the bucket (today's each, b24jssdk: one request a page) runs the wall
-- export on `small` leads instead; its row gives that figure and its
-- 100,000-row estimate at the same distance from its own floor.

local fake = require "bitrix24.fake.server"
local json = require "cjson"

-- The peers and the versions bench/npm/export.cjs was written for (as
-- spec/npm_conformance_spec.lua pins them).
local PACKAGES = { { "@bitrix24/b24jssdk", "2.2.0" }, { "@2bad/bitrix", "2.5.1" } }
local INSTALL_TIMEOUT = 180

return function(B)
  local L, C, q = B.L, B.C, B.L.quote
  local X = C.lists
  local rate, burst = X.bucket[1], X.bucket[2]
  local npm_dir = B.root .. "/bench/.npm"
  local fmt_int = B.fmt_int

  -- Ours: fast, parallel (0: the default), page_batch (0: the default).
  -- The peers: pkg. `runs`: what the rows below need of each.
  local C1 = { ours = true, fast = true, parallel = 1, page_batch = 0, label = "ours, fast, parallel = 1" }
  local CD = { ours = true, fast = true, parallel = 0, page_batch = 0, label = "ours, fast, default parallel" }
  local CP = { ours = true, fast = true, parallel = 4, page_batch = 0, label = "ours, fast, parallel = 4" }
  local CN = { ours = true, fast = false, parallel = 0, page_batch = 0, label = "ours, normal, default parallel" }
  local CT = { ours = true, fast = true, parallel = 1, page_batch = 1,
    label = "today's each (page_batch = 1, parallel = 1)" }
  local PJ = { pkg = "b24jssdk", label = "@bitrix24/b24jssdk fetchList" }
  local P2 = { pkg = "2bad", label = "@2bad/bitrix list" }

  ------------------------------------------------------------ running one

  local function command(c, portal, held, limited)
    local leads = held.count
    if c.ours then
      return string.format("%s %s list %s %d %d %d %d %d %d %d %s", B.LUA, q(B.root .. "/bench/worker.lua"),
        q(portal.https_webhook_url), leads, held.first_id, held.last_id, c.fast and 1 or 0, c.parallel,
        c.page_batch, limited and 1 or 0, q(portal.ca_file))
    end
    return string.format("B24_SDK_DIR=%s B24_HOOK_URL=%s NODE_EXTRA_CA_CERTS=%s node %s %s %d %s", q(npm_dir),
      q(portal.https_webhook_url), q(portal.ca_file), q(B.root .. "/bench/npm/export.cjs"), c.pkg, leads,
      limited and "" or "unlimited")
  end

  -- The most requests the portal had in flight at once: each request lasts
  -- from its arrival to arrival + latency + its calls' cost. The portal's
  -- clock (ngx.now) has a millisecond's grain, so a request that follows
  -- another at once may seem to start before it ended: SLACK forgives that.
  local SLACK = 0.005
  local function in_flight(spans)
    local events = {}
    for _, s in ipairs(spans) do
      events[#events + 1] = { s[1], 1 }
      events[#events + 1] = { s[2] - SLACK, -1 }
    end
    table.sort(events, function(a, b) return a[1] < b[1] or a[1] == b[1] and a[2] < b[2] end)
    local now, most = 0, 0
    for _, e in ipairs(events) do
      now = now + e[2]
      if now > most then most = now end
    end
    return math.max(1, most)
  end

  -- What the wall portal makes of this log: the bucket floor, and the time
  -- the requests take end to end divided by the requests in flight.
  local function floors(log, parallel)
    local spans, busy = {}, 0
    for i, e in ipairs(log) do
      local calls = type(e.calls) == "table" and #e.calls or 1
      local d = X.latency + calls * X.call_cost
      busy = busy + d
      spans[i] = { e.time, e.time + d }
    end
    parallel = parallel or in_flight(spans)
    local bucket = math.max(0, (#log - burst) / rate)
    local latency = busy / parallel
    return { bucket = bucket, latency = latency, floor = math.max(bucket, latency), parallel = parallel }
  end

  -- One export on `portal` reset to `leads` leads. The worker or script
  -- raises (a failure to run) when the rows are wrong.
  local function export(c, portal, leads, limited)
    portal:reset { leads = leads }
    local held = portal:leads {}
    if held.count ~= leads then error(string.format("the portal holds %s leads, not %d", held.count, leads), 0) end
    local out = B.run(command(c, portal, held, limited))
    if not out:find("rows=" .. leads, 1, true) or out:find("ordered=false", 1, true) then
      error(c.label .. ": not every id once in ascending order: " .. out, 0)
    end
    local log = portal:requests()
    local r = { seconds = B.kv(out, "seconds"), requests = #log, rejected = 0, log = log, leads = leads,
      rss0 = B.kv(out, "rss0"), peak = B.kv(out, "peak"), lua_peak = B.kv(out, "lua_peak") }
    for _, e in ipairs(log) do
      if e.status == 503 then r.rejected = r.rejected + 1 end
    end
    B.log("   %-45s %7s leads: %6d requests, %.2f s%s", c.label, fmt_int(leads), r.requests, r.seconds,
      r.rejected > 0 and string.format(", %d x 503", r.rejected) or "")
    return r
  end

  local count_portal, wall_portal
  local counted, walled = {}, {}   -- contender -> result

  local function portals()
    if not count_portal then
      count_portal = fake.start { leads = X.leads, rate = 0, timeout = 900 }
    end
    if not wall_portal then
      wall_portal = fake.start { leads = X.leads, latency = X.latency, call_cost = X.call_cost, rate = rate,
        burst = burst, timeout = 900 }
    end
  end

  -- The wall export of one contender: at full size when its floor allows,
  -- else on `small` leads with the 100,000-row estimate.
  local function wall(c)
    local full = counted[c] and floors(counted[c].log, 1)
    local leads = X.leads
    if full and full.bucket > X.max_floor then leads = X.small end
    local r = export(c, wall_portal, leads, true)
    local f = floors(r.log)
    r.floor, r.parallel, r.ratio = f, f.parallel, r.seconds / f.floor
    if leads ~= X.leads then
      local est = floors(counted[c].log, f.parallel)
      r.estimate, r.full_floor = r.ratio * est.floor, est
    end
    r.full_seconds = r.estimate or r.seconds
    walled[c] = r
    return r
  end

  local function where(r)
    if r.leads == X.leads then return string.format("%.1f s", r.seconds) end
    return string.format("%.1f s on %s leads, ~%s s for %s", r.seconds, fmt_int(r.leads), fmt_int(r.estimate),
      fmt_int(X.leads))
  end

  local N = fmt_int(X.leads)

  ------------------------------------------------------------ 7a, 7b

  B.bench("7a", "export: requests of " .. N .. " leads", function()
    portals()
    for _, c in ipairs { C1, CD, CP, CN, CT } do counted[c] = export(c, count_portal, X.leads, false) end
    local a, d, n, t = counted[C1].requests, counted[CD].requests, counted[CN].requests, counted[CT].requests
    B.facts["7"] = { requests = fmt_int(math.max(a, d)) }
    B.add_row { id = "7a", name = string.format("export of %s leads, fast mode: HTTP requests; every id exactly "
        .. "once, ascending", N),
      measured = string.format("%s (parallel = 1), %s (default parallel); ids: all once, ascending; today's "
        .. "each: %s; parallel = 4: %s (its id ranges cost a few more)", fmt_int(a), fmt_int(d), fmt_int(t),
        fmt_int(counted[CP].requests)),
      target = "<= 42", met = a <= 42 and d <= 42 }
    B.add_row { id = "7b", name = string.format("export of %s leads, normal mode (order ID ASC): HTTP requests", N),
      measured = fmt_int(n), target = "<= 42", met = n <= 42 }
    B.detail("Row 7a/7b: crm.lead.list of %s generated leads (select ID, TITLE) from a fake portal over HTTPS "
      .. "with no latency and no bucket (the client's own bucket off), requests counted by the portal; each "
      .. "export checked against the portal's ids (strictly ascending from its first id to its last, as many "
      .. "as it holds). Seconds (context only): %.1f fast parallel = 1, %.1f fast default, %.1f fast "
      .. "parallel = 4, %.1f normal default, %.1f today's each.", N, counted[C1].seconds, counted[CD].seconds,
      counted[CP].seconds, counted[CN].seconds, counted[CT].seconds)
  end)

  ------------------------------------------------------------ 7c-7f

  B.bench("7c", "export: wall time against the floor", function()
    if not counted[CT] then error("needs row 7a's counts", 0) end
    -- Judged on the export that ran: its ratio to its own floor (the
    -- estimate keeps that ratio, so the target shows the full floor).
    local function row(id, c)
      local r = wall(c)
      local f = r.full_floor or r.floor
      local limit = 1.15 * f.floor
      B.add_row { id = id, name = string.format("wall time of the %s-lead export, %s, %g ms a request + %g ms a "
          .. "sub-call, standard bucket (%g/s, %d)", N, c.label:gsub("^ours, ", ""), X.latency * 1000,
          X.call_cost * 1000, rate, burst),
        measured = string.format("%s: %.2fx the floor (%d requests, %d in flight, %d x 503)", where(r), r.ratio,
          r.requests, r.parallel, r.rejected),
        target = string.format("<= 1.15x max(bucket %.1f s, latency %.1f s) = %.1f s", f.bucket, f.latency, limit),
        met = r.ratio <= 1.15 and r.rejected == 0 }
    end
    row("7c", C1)
    row("7d", CD)
    row("7e", CP)
    row("7f", CN)
    local r = wall(CT)
    B.add_row { id = "7g", name = "today's each beside them (one list call a request: page_batch = 1, "
        .. "parallel = 1)",
      measured = string.format("%s (%d requests, %.2fx its floor)", where(r), r.requests, r.ratio),
      target = "(reported)" }
    B.detail("Rows 7c-7g: floors from the portal's log: bucket (requests - %d) / %g s; latency: every request's "
      .. "%g s plus %g s per method call in it, summed, divided by the most requests the portal had in flight "
      .. "at once. A contender whose %s-lead export has a bucket floor above %d s runs on %s leads; its "
      .. "estimate is its measured ratio to the floor times the floor of the full export (requests counted "
      .. "in row 7a). The default parallel is what `each` uses without the option.", burst, rate, X.latency,
      X.call_cost, N, X.max_floor, fmt_int(X.small))
  end)

  ------------------------------------------------------------ 7g

  B.bench("7h", "export: peak memory", function()
    local small, large = X.mem[1], X.mem[2]
    portals()
    local a = export(CD, count_portal, small, false)
    local b = large == X.leads and counted[CD] or export(CD, count_portal, large, false)
    local g1, g2 = a.peak - a.rss0, b.peak - b.rss0
    B.add_row { id = "7h", name = string.format("peak RSS growth of a %s-row export vs a %s-row one (fast, "
        .. "default parallel)", fmt_int(large), fmt_int(small)),
      measured = string.format("+%s KiB vs +%s KiB", fmt_int(g2), fmt_int(g1)),
      target = "bounded by the batches in flight: within 1 MiB", met = g2 - g1 < 1024 }
    B.detail("Row 7h: VmHWM after the export minus VmRSS before it (the expected ids are in memory before); "
      .. "Lua heap peak %.0f KiB (%s rows) and %.0f KiB (%s rows).", a.lua_peak, fmt_int(small), b.lua_peak,
      fmt_int(large))
  end)

  ------------------------------------------------------------ 7h, 7i

  -- Installs the peers into bench/.npm (gitignored) when they are missing
  -- or of another version: into a fresh folder, renamed into place.
  local function complete(dir)
    for _, p in ipairs(PACKAGES) do
      local ok, t = pcall(json.decode, L.read_file(dir .. "/node_modules/" .. p[1] .. "/package.json") or "")
      if not ok or type(t) ~= "table" or t.version ~= p[2] then return false end
    end
    return true
  end
  local function ensure_packages()
    local _, node = L.sh("node -e 'process.exit(Number(process.versions.node.split(\".\")[0]) >= 20 ? 0 : 3)'")
    if not node then error("the peers need node >= 20 and npm", 0) end
    if complete(npm_dir) then return end
    local tmp = npm_dir .. ".tmp." .. os.time()
    local specs = {}
    for i, p in ipairs(PACKAGES) do specs[i] = p[1] .. "@" .. p[2] end
    local out, ok = L.sh(string.format("rm -rf %s && mkdir -p %s && echo '{\"private\":true}' > %s/package.json "
      .. "&& cd %s && timeout -k 5 %d npm install --no-audit --no-fund --ignore-scripts --no-package-lock "
      .. "--loglevel=error %s", q(tmp), q(tmp), q(tmp), q(tmp), INSTALL_TIMEOUT, table.concat(specs, " ")))
    if not ok or not complete(tmp) then
      L.sh("rm -rf " .. q(tmp))
      error("npm could not install " .. table.concat(specs, " ") .. ":\n" .. out:sub(-1500), 0)
    end
    L.sh("rm -rf " .. q(npm_dir))
    assert(os.rename(tmp, npm_dir), "cannot move " .. tmp .. " to " .. npm_dir)
  end

  B.bench("7i", "export: the npm peers", function()
    if not (counted[C1] and walled[CD]) then error("needs rows 7a and 7c", 0) end
    ensure_packages()
    -- b24jssdk pages one request at a time: its count comes from the count
    -- portal; @2bad/bitrix paces itself at 2 a second, so its one run is on
    -- the wall portal (which counts too).
    counted[PJ] = export(PJ, count_portal, X.leads, false)
    local j, t = wall(PJ), wall(P2)
    local rj, rt = counted[PJ].requests, t.leads == X.leads and t.requests or nil
    if not rt then error("@2bad/bitrix ran on fewer leads than the full export", 0) end
    local best = math.min(rj, rt)
    B.add_row { id = "7i", name = string.format("export of %s leads: requests, ours (fast, parallel = 1) vs the "
        .. "best of @bitrix24/b24jssdk fetchList and @2bad/bitrix list", N),
      measured = string.format("%s vs %s (b24jssdk %s, 2bad %s)", fmt_int(counted[C1].requests), fmt_int(best),
        fmt_int(rj), fmt_int(rt)),
      target = "<= the best", met = counted[C1].requests <= best }
    local ours = walled[CD].full_seconds
    local p4 = walled[CP] and string.format(" (parallel = 4: %.1f s)", walled[CP].full_seconds) or ""
    B.add_row { id = "7j", name = string.format("export of %s leads, same portal, latency and bucket: wall time, "
        .. "ours (fast, default parallel) vs both", N),
      measured = string.format("%.1f s%s vs b24jssdk %s, 2bad %s", ours, p4, where(j), where(t)),
      target = "less than both", met = ours < j.full_seconds and ours < t.full_seconds }
    B.detail("Rows 7i/7j: the peers from npm (%s %s, %s %s) in bench/.npm, run by node with their defaults "
      .. "(b24jssdk's own bucket 50 + 2/s; @2bad/bitrix's queue of 2 a second) through bench/npm/export.cjs, "
      .. "against the same portals over HTTPS; each export checked (as many rows as leads, ids ascending). "
      .. "b24jssdk: %d requests, %d x 503, %.2fx its floor on the wall portal; 2bad: %d requests, %d x 503, "
      .. "%d in flight at most, %.2fx its floor.", PACKAGES[1][1], PACKAGES[1][2], PACKAGES[2][1],
      PACKAGES[2][2], j.requests, j.rejected, j.ratio, t.requests, t.rejected, t.parallel, t.ratio)
  end)

  if count_portal then count_portal:stop() end
  if wall_portal then wall_portal:stop() end
end
