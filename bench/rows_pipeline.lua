-- Rows 6a-6d of `make bench`: many requests in flight (issue 15).
-- Called by bench/run.lua with its context (see `ctx` there); each row runs
-- its contenders in their own processes against fake portals started here.
--
--   6a  contacts of N leads at 300 ms a request, enterprise bucket:
--       parallel = 8 beside the sequential run
--   6b  the same on the standard bucket, parallel = 8: the bucket's floor
--   6c  inside nginx: one handler fanning out 50 calls, parallel = 10,
--       while a probe keeps asking the same worker for an answer
--   6d  calls/s of this tree beside BENCH_BASE's (default 93a171e, the
--       commit before the pipeline), built from `git archive` in a temp dir

local fake = require "bitrix24.fake.server"

local DEFAULT_BASE = "93a171e"

local function two_digits(t)
  local out = {}
  for i, v in ipairs(t) do out[i] = string.format("%.2f", v) end
  return table.concat(out, ", ")
end

return function(B)
  local L, C, q = B.L, B.C, B.L.quote
  local worker = B.LUA .. " " .. q(B.root .. "/bench/worker.lua")

  -- The contacts job against a fresh portal: its seconds, the portal's
  -- count of requests and of 503 answers, and the floors they give.
  local function contacts(bucket, parallel)
    local rate, burst = bucket[1], bucket[2]
    local portal = fake.start { tls = false, leads = C.contacts.leads, latency = C.contacts.latency,
      rate = rate, burst = burst, timeout = 900 }
    local ok, out = pcall(B.run, string.format("%s contacts %s %d %g %d %d", worker, q(portal.webhook_url),
      C.contacts.leads, rate, burst, parallel))
    local log = ok and portal:requests()
    portal:stop()
    if not ok then error(out, 0) end
    local r = {
      seconds = B.kv(out, "seconds"), answered = B.kv(out, "answered"), failed = B.kv(out, "failed"),
      requests = #log, rejected = 0,
      -- the portal's own clock, from the first request's arrival to the last's
      span = #log > 0 and log[#log].time - log[1].time or 0,
    }
    for _, e in ipairs(log) do
      if e.status == 503 then r.rejected = r.rejected + 1 end
    end
    -- The least the portal allows: the bucket (one request a 1/rate s once
    -- the burst is used up) or the latency (requests / parallel rounds).
    r.bucket_floor = math.max(0, (r.requests - burst) / rate)
    r.latency_floor = math.ceil(r.requests / parallel) * C.contacts.latency
    r.floor = math.max(r.bucket_floor, r.latency_floor)
    B.log("   contacts bucket %g/%d parallel %d: %.2f s, %d requests, %d x 503, floor %.2f s", rate, burst,
      parallel, r.seconds, r.requests, r.rejected, r.floor)
    if r.answered ~= C.contacts.leads or r.failed ~= 0 then
      error(string.format("contacts: %d of %d leads answered, %d failed", r.answered, C.contacts.leads, r.failed), 0)
    end
    return r
  end

  local leads = B.fmt_int(C.contacts.leads)
  local lat_ms = C.contacts.latency * 1000

  B.bench("6a", "contacts, enterprise bucket, parallel = 8 vs sequential", function()
    local seq = contacts(C.contacts.enterprise, 1)
    local par = contacts(C.contacts.enterprise, 8)
    local limit = 1.2 * par.floor
    B.facts["6"] = B.facts["6"] or {}
    B.facts["6"].speedup = seq.seconds / par.seconds
    B.add_row { id = "6a", name = string.format("contacts of %s leads (%d requests), %g ms a request, enterprise "
        .. "bucket (%g/s, %d): parallel = 8 vs sequential", leads, par.requests, lat_ms,
        C.contacts.enterprise[1], C.contacts.enterprise[2]),
      measured = string.format("%.1f s vs %.1f s: %.1fx faster (%.2fx the floor)", par.seconds, seq.seconds,
        seq.seconds / par.seconds, par.seconds / par.floor),
      target = string.format("<= 1.2x max(bucket %.1f s, ceil(%d / 8) x %g s) = %.1f s", par.bucket_floor,
        par.requests, C.contacts.latency, limit),
      met = par.seconds <= limit and par.rejected == 0 }
    B.detail("Row 6a: sequential %.2f s (%d requests, %d x 503, latency floor %.1f s); parallel = 8 %.2f s "
      .. "(%d requests, %d x 503).", seq.seconds, seq.requests, seq.rejected, seq.latency_floor, par.seconds,
      par.requests, par.rejected)
  end)

  B.bench("6b", "contacts, standard bucket, parallel = 8", function()
    local par = contacts(C.contacts.standard, 8)
    local limit = 1.1 * par.floor
    B.add_row { id = "6b", name = string.format("the same on the standard bucket (%g/s, %d), parallel = 8",
        C.contacts.standard[1], C.contacts.standard[2]),
      measured = string.format("%.1f s (%.2fx the floor), %d x 503", par.seconds, par.seconds / par.floor,
        par.rejected),
      target = string.format("<= 1.1x the floor %.1f s = %.1f s, zero 503", par.floor, limit),
      met = par.seconds <= limit and par.rejected == 0 }
    B.detail("Row 6b: %d requests, bucket floor (requests - burst) / rate = %.1f s, latency floor %.1f s; "
      .. "the portal saw the first and the last request %.1f s apart (its clock, not the client's). "
      .. "The sequential run is not repeated here: at %g ms a request it sends faster than %g/s, so the "
      .. "same bucket floor bounds it.", par.requests, par.bucket_floor, par.latency_floor, par.span, lat_ms,
      C.contacts.standard[1])
  end)

  B.bench("6c", "nginx: one handler fanning out, a probe beside it", function()
    local n, parallel = C.fanout.calls, C.fanout.parallel
    local out_file = B.tmp .. "/fanout.json"
    -- The fan-out in the background; probes one after another until it
    -- is answered (curl's time_total: connect, request, answer).
    local out = B.run(string.format("curl -sf -m 120 -o %s %s & f=$!; sleep 0.05; "
      .. "while kill -0 $f 2>/dev/null; do curl -s -m 10 -o /dev/null -w 'probe=%%{time_total}\\n' %s; "
      .. "sleep 0.02; done; wait $f", q(out_file),
      q(string.format("%s/fanout?n=%d&parallel=%d", B.nginx.url, n, parallel)), q(B.nginx.url .. "/probe")))
    local answer = L.read_file(out_file) or ""
    local seconds, ok, form = tonumber(answer:match('"seconds":([%d%.]+)')), tonumber(answer:match('"ok":(%d+)')),
      answer:match('"form":"([^"]+)"')
    if not (seconds and ok) then error("/fanout answered: " .. answer:sub(1, 300), 0) end
    if ok ~= n then error(string.format("/fanout: %d of %d calls succeeded", ok, n), 0) end
    local probes = {}
    for v in out:gmatch("probe=([%d%.]+)") do probes[#probes + 1] = tonumber(v) * 1000 end
    if #probes == 0 then error("no probe answered during the fan-out", 0) end
    B.facts["6"] = B.facts["6"] or {}
    B.facts["6"].form = form
    local worst = 0
    for _, v in ipairs(probes) do worst = math.max(worst, v) end
    -- The issue's 1.3 s for 5 rounds of 200 ms: 1.3x the floor.
    local floor = math.ceil(n / parallel) * C.fanout.latency
    local limit = 1.3 * floor
    B.add_row { id = "6c", name = string.format("nginx: one handler fanning out %d calls, parallel = %d, portal "
        .. "latency %g ms; a probe to the same worker meanwhile", n, parallel, C.fanout.latency * 1000),
      measured = string.format("%.2f s (%s); probe median %.1f ms, worst %.1f ms over %d", seconds, form,
        L.median(probes), worst, #probes),
      target = string.format("<= %.2f s, probe answered", limit), met = seconds <= limit }
    B.detail("Row 6c: floor ceil(%d / %d) x %g s = %.2f s; the handler's own time (ngx.now around the "
      .. "fan-out) %.3f s; %d probes answered while it ran (curl time_total, ms: median %.1f, worst %.1f).",
      n, parallel, C.fanout.latency, floor, seconds, #probes, L.median(probes), worst)
  end)

  B.bench("6d", "calls/s of this tree vs BENCH_BASE", function()
    local base = os.getenv("BENCH_BASE") or DEFAULT_BASE
    local function resolve(rev)
      local c = L.capture("git -C " .. q(B.root) .. " rev-parse --verify --quiet " .. q(rev .. "^{commit}"))
      return c:match("^%x+$") and c or nil
    end
    local commit, stand_in = resolve(base), nil
    -- A shallow clone (CI) may not hold the base: the smoke run still
    -- exercises the row, on HEAD against itself, and says so.
    if not commit and B.SMOKE then commit, stand_in = resolve("HEAD"), base end
    if not commit then error("BENCH_BASE " .. base .. " is not a commit of this repository", 0) end
    local dir = B.tmp .. "/base"
    B.run(string.format("mkdir -p %s && git -C %s archive %s | tar -x -C %s && make -s -C %s build LUA_VERSION=%s",
      q(dir), q(B.root), commit, q(dir), q(dir), B.LUA_VERSION))
    local url = B.nginx.url .. "/rest/1/bench/"
    local function rate(tree)
      return B.rate_of(B.run(string.format("BENCH_TREE=%s %s client %s %d", q(tree), worker, q(url), C.base.calls)))
    end
    -- Each round: this tree, the base, the base again (rotating order); the
    -- base against itself is the noise.
    local order = { "head", "base", "base2" }
    local trees = { head = B.root, base = dir, base2 = dir }
    local ratio, noise = {}, {}
    for r = 1, C.base.rounds do
      B.wait_quiet()
      local got = {}
      for k = 0, 2 do
        local key = order[(r - 1 + k) % 3 + 1]
        got[key] = rate(trees[key])
      end
      ratio[r], noise[r] = got.head / got.base, got.base2 / got.base
      B.log("   round %d head %.0f base %.0f base %.0f calls/s", r, got.head, got.base, got.base2)
    end
    local m = L.median(ratio)
    -- The noise: how far the base lands from itself (middle half of the
    -- rounds, at least 2%).
    local spread = {}
    for i, v in ipairs(noise) do spread[i] = math.abs(v - 1) end
    local n = math.max(0.02, L.median(spread) * 2)
    local function range(t)
      local lo, hi = math.huge, -math.huge
      for _, v in ipairs(t) do lo, hi = math.min(lo, v), math.max(hi, v) end
      return string.format("%.2f-%.2f", lo, hi)
    end
    B.add_row { id = "6d", name = string.format("calls/s on one keep-alive connection: this tree vs %s "
        .. "(%s), same run", commit:sub(1, 7), stand_in and ("HEAD: " .. stand_in .. " is not in this clone")
        or "the commit before the pipeline"),
      measured = string.format("%.2fx (rounds %s; base vs itself %s)", m, range(ratio), range(noise)),
      -- A noise of half the figure or more leaves nothing to judge.
      target = n < 0.5 and string.format(">= 1 - noise = %.2fx", 1 - n) or "(noise too large to judge)",
      met = n < 0.5 and m >= 1 - n or nil }
    B.detail("Row 6d: %d interleaved rounds of %s client:call each, this tree, %s, %s again; per round this "
      .. "tree / base: %s; base / base: %s. Noise = twice the median distance of base / base from 1 "
      .. "(at least 2%%).", C.base.rounds, B.fmt_int(C.base.calls), commit:sub(1, 7), commit:sub(1, 7),
      two_digits(ratio), two_digits(noise))
  end)
end
