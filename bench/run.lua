-- make bench: this client side by side with its alternatives, in one run.
--
--   lua5.4 bench/run.lua [--smoke] [--only 6,7a] [--out FILE]
--
-- The machine is shared and noisy, so every headline figure is a ratio to
-- a peer measured in the same run, interleaved (each round runs every
-- contender once, in a rotating order; the figure is the median over the
-- rounds of the per-round ratio). Prints one table and writes it, with the
-- machine, versions, date and the notes, to bench/RESULTS.md (--out).
--
-- Targets are reported, not asserted: the exit status is non-zero only
-- when a benchmark failed to run. --smoke runs every row with small counts
-- (about a minute) and writes no file unless --out is given; so does
-- --only, which runs the rows whose ids start with one of the given
-- prefixes (a row that needs another's figures says so when that one is
-- left out).
--
-- Needs: make (the core for this Lua and for LuaJIT), build/bench/curl_loop,
-- nginx with the Lua module, wrk, /usr/bin/python3 with requests, luasocket.

local root = arg[0]:match("^(.*)/bench/[^/]+$") or "."
local ver = _VERSION:match("%d+%.%d+")
local LUA_VERSION = os.getenv("LUA_VERSION") or ver
package.path = root .. "/lua/?.lua;" .. package.path
package.cpath = root .. "/build/" .. LUA_VERSION .. "/?.so;" .. package.cpath
local L = dofile(root .. "/bench/lib.lua")
local q = L.quote

local bitrix24 = require "bitrix24"
local core = require "bitrix24.core"
local fake = require "bitrix24.fake.server"

local SMOKE, OUT, ONLY = false, nil, nil
do
  local i = 1
  while arg[i] do
    if arg[i] == "--smoke" then SMOKE = true
    elseif arg[i] == "--out" then i = i + 1; OUT = arg[i]
    elseif arg[i] == "--only" and arg[i + 1] then
      i = i + 1
      ONLY = {}
      for p in arg[i]:gmatch("[^,%s]+") do ONLY[#ONLY + 1] = p end
    else io.stderr:write("usage: run.lua [--smoke] [--only 6,7a] [--out FILE]\n"); os.exit(2) end
    i = i + 1
  end
end
if not SMOKE and not ONLY and not OUT then OUT = root .. "/bench/RESULTS.md" end

local function selected(id)
  if not ONLY then return true end
  for _, p in ipairs(ONLY) do
    if id:sub(1, #p) == p then return true end
  end
  return false
end

-- Counts: full `make bench` stays under about 10 minutes on 2 cores.
local C = SMOKE and {
  rounds = 2, client = 1000, curl_loop = 1000, wrk_s = 1, luasocket = 200, python = 200, curl_proc = 10,
  big_rows = 20000, decode_reps = 5,
  budget = { 500, 10, 5 },
  mem = { 1000, 10000 }, export = { 1000, 10000 },
  nginx_rounds = 1, nginx_wrk_s = 1, quiet_wait = 1,
  -- rows 6 and 7 (bench/rows_pipeline.lua, bench/rows_export.lua)
  contacts = { leads = 500, latency = 0.05, enterprise = { 5, 250 }, standard = { 2, 5 } },
  fanout = { calls = 10, parallel = 5, latency = 0.05 },
  base = { rounds = 2, calls = 2000 },
  lists = { leads = 5000, small = 500, latency = 0.02, call_cost = 0.001, bucket = { 2, 50 },
            mem = { 3000, 5000 }, max_floor = 10 },
} or {
  -- many short rounds rather than a few long ones: the load of the other
  -- tenants comes and goes within seconds, and a per-round ratio of two
  -- runs a second apart cancels most of it.
  rounds = 13, client = 8000, curl_loop = 8000, wrk_s = 1, luasocket = 2000, python = 2000, curl_proc = 100,
  big_rows = 20000, decode_reps = 31,
  budget = { 5000, 2, 50 },
  mem = { 1000, 100000 }, export = { 1000, 100000 },
  nginx_rounds = 7, nginx_wrk_s = 1, quiet_wait = 5,
  -- the issues' own figures (issues 15 and 16)
  contacts = { leads = 10000, latency = 0.3, enterprise = { 5, 250 }, standard = { 2, 50 } },
  fanout = { calls = 50, parallel = 10, latency = 0.2 },
  -- short runs, many rounds: the three runs of a round see the same load
  base = { rounds = 25, calls = 3000 },
  -- max_floor: a contender whose 100,000-row export cannot take less than
  -- this many seconds at the bucket runs on `small` leads instead.
  lists = { leads = 100000, small = 5000, latency = 0.2, call_cost = 0.002, bucket = { 2, 50 },
            mem = { 10000, 100000 }, max_floor = 60 },
}

-- A round starts when the other tenants use under this share of the
-- machine (or after quiet_wait seconds): fewer rounds land in a burst.
local QUIET = 0.15

local LUA = os.getenv("LUA") or ("lua" .. ver)
local PYTHON = "/usr/bin/python3"
local CURL_LOOP = root .. "/build/bench/curl_loop"
local UA = "bitrix24-lua/" .. bitrix24._VERSION
local METHOD = "crm.lead.contact.items.get"
local BODY = L.REQUEST_BODY

local function log(fmt, ...)
  io.stderr:write(string.format(fmt, ...), "\n")
  io.stderr:flush()
end

-- Runs a command; returns its output, raising when it fails.
local function run(cmd)
  local out, ok = L.sh(cmd)
  if not ok then error(cmd .. "\nfailed:\n" .. out:sub(-2000), 0) end
  return out
end

local function kv(out, key)
  return tonumber(out:match(key .. "=([%d%.%-]+)"))
end

-- calls/s from a "calls=N seconds=S" line.
local function rate_of(out)
  local n, s = kv(out, "calls"), kv(out, "seconds")
  if not (n and s and s > 0) then error("no calls=/seconds= in: " .. out, 0) end
  return n / s
end

local function fmt_int(n)
  local s = string.format("%d", math.floor(n + 0.5))
  return (s:reverse():gsub("(%d%d%d)", "%1,"):reverse():gsub("^,", ""))
end

---------------------------------------------------------------- rows

local rows = {}        -- { id, name, measured, target, met }  (met: true, false, nil = no target)
local notes = {}       -- id -> text for RESULTS.md (failures)
local facts = {}       -- id -> numbers bench/notes.lua explains
local details = {}     -- lines for RESULTS.md
local failed = {}      -- benchmarks that did not run

local function add_row(r) rows[#rows + 1] = r end
local function detail(fmt, ...) details[#details + 1] = string.format(fmt, ...) end

-- A benchmark that raises is a failure to run: its row says so.
local function bench(id, name, fn)
  if not selected(id) then return end
  log("== %s %s", id, name)
  local ok, err = pcall(fn)
  if not ok then
    failed[#failed + 1] = id
    add_row { id = id, name = name, measured = "FAILED TO RUN", target = "", met = nil }
    notes[id] = (notes[id] and notes[id] .. "\n\n" or "") .. "Failed to run: " .. tostring(err)
    log("!! %s failed: %s", id, tostring(err))
  end
end

---------------------------------------------------------------- setup

log("bench: %s mode, %s", SMOKE and "smoke" or "full", LUA)
local LOAD_START = L.capture("cut -d' ' -f1-3 /proc/loadavg")
local big = L.big_body(C.big_rows)
local tmp = L.capture('mktemp -d "${TMPDIR:-/tmp}/b24-bench-run.XXXXXXXX"')
local big_file = tmp .. "/big.json"
L.write_file(big_file, big)

-- Row 5's fake portal: no rate limit, no operating-time charge (the bench
-- measures latency, not the portal's limits).
local portal = fake.start { tls = false, rate = 0, op_cost = 0, op_limit = 1e9, timeout = 900 }
-- Row 6c's: the same with a latency, for the fan-out inside nginx.
local slow = fake.start { tls = false, rate = 0, op_cost = 0, op_limit = 1e9, timeout = 900,
  latency = C.fanout.latency }
local nginx = L.start_nginx { big = big, portal = portal, slow_portal = slow, lifetime = 900 }
local function cleanup()
  pcall(nginx.stop, nginx)
  pcall(portal.stop, portal)
  pcall(slow.stop, slow)
  os.execute("rm -rf " .. q(tmp))
end

local SMALL_URL = nginx.url .. "/rest/1/bench/" .. METHOD
local SMALL_BASE = nginx.url .. "/rest/1/bench/"

local ok_all, top_err = pcall(function()

---------------------------------------------------------------- 1. calls/s

local contenders = {
  { key = "client", label = "bitrix24 client:call", run = function()
      return rate_of(run(string.format("%s %s/bench/worker.lua client %s %d", LUA, root, q(SMALL_BASE), C.client)))
    end },
  { key = "curl_loop", label = "plain C libcurl loop", run = function()
      return rate_of(run(string.format("%s %s %s %d %s", q(CURL_LOOP), q(SMALL_URL), q(BODY), C.curl_loop, q(UA))))
    end },
  { key = "wrk", label = "wrk -t1 -c1", run = function()
      local out = run(string.format("BENCH_BODY=%s BENCH_UA=%s wrk -t1 -c1 -d%ds -s %s %s", q(BODY), q(UA),
        C.wrk_s, q(root .. "/bench/wrk_post.lua"), q(SMALL_URL)))
      if out:find("Non%-2xx") or out:find("Socket errors") then error("wrk: errors:\n" .. out, 0) end
      return assert(tonumber(out:match("Requests/sec:%s*([%d%.]+)")), "no Requests/sec in wrk output")
    end },
  { key = "luasocket", label = "luasocket socket.http + cjson", run = function()
      return rate_of(run(string.format("%s %s/bench/worker.lua luasocket %s %d", LUA, root, q(SMALL_URL), C.luasocket)))
    end },
  { key = "python", label = "Python requests.Session", run = function()
      return rate_of(run(string.format("%s %s/bench/py_requests.py %s %s %d %s", PYTHON, root, q(SMALL_URL), q(BODY),
        C.python, q(UA))))
    end },
  { key = "curl_proc", label = "one curl process per call", run = function()
      local cmd = string.format("i=0; while [ $i -lt %d ]; do curl -sf -o /dev/null -X POST -H %s -H %s -A %s "
        .. "--data-binary %s %s || exit 1; i=$((i+1)); done", C.curl_proc, q("Content-Type: application/json"),
        q("Accept: application/json"), q(UA), q(BODY), q(SMALL_URL))
      local t0 = core.monotonic()
      run(cmd)
      return C.curl_proc / (core.monotonic() - t0)
    end },
}

bench("1", "calls per second, one keep-alive connection", function()
  local rates = {}
  for _, c in ipairs(contenders) do rates[c.key] = {} end
  local busy = {}
  for r = 1, C.rounds do
    busy[r] = L.wait_quiet(QUIET, C.quiet_wait)
    for k = 0, #contenders - 1 do
      local c = contenders[(r - 1 + k) % #contenders + 1]
      local v = c.run()
      rates[c.key][r] = v
      log("   round %d %-10s %10.0f calls/s", r, c.key, v)
    end
  end
  local function ratio(peer)
    local t = {}
    for r = 1, C.rounds do t[r] = rates.client[r] / rates[peer][r] end
    return L.median(t), t
  end
  local med = {}
  for _, c in ipairs(contenders) do med[c.key] = L.median(rates[c.key]) end
  local function cell(peer)
    local m = ratio(peer)
    return string.format("%.2fx", m), m
  end
  local s, m = cell("curl_loop")
  add_row { id = "1a", name = "calls/s on one keep-alive connection: client vs plain C libcurl loop",
    measured = s, target = ">= 0.95x", met = m >= 0.95 }
  s, m = cell("wrk")
  add_row { id = "1b", name = "calls/s: client vs wrk -t1 -c1", measured = s, target = ">= 0.6x", met = m >= 0.6 }
  s, m = cell("luasocket")
  add_row { id = "1c", name = "calls/s: client vs luasocket socket.http + cjson (new connection per call)",
    measured = s, target = ">= 2x", met = m >= 2 }
  s = cell("python")
  add_row { id = "1d", name = "calls/s: client vs Python requests.Session", measured = s, target = "(reported)" }
  s = cell("curl_proc")
  add_row { id = "1e", name = "calls/s: client vs one curl process per call", measured = s, target = "(reported)" }
  detail("Row 1, calls/s, median of %d rounds (absolute rates are context only: they move with the machine's load):",
    C.rounds)
  for _, c in ipairs(contenders) do
    local per = {}
    for r = 1, C.rounds do per[r] = fmt_int(rates[c.key][r]) end
    detail("- %s: %s/s (rounds: %s)", c.label, fmt_int(med[c.key]), table.concat(per, ", "))
  end
  local _, t = ratio("curl_loop")
  local per, cw, bz = {}, {}, {}
  for r = 1, C.rounds do
    per[r] = string.format("%.2f", t[r])
    cw[r] = rates.curl_loop[r] / rates.wrk[r]
    bz[r] = string.format("%.0f%%", busy[r] * 100)
  end
  detail("- client / C loop per round: %s", table.concat(per, ", "))
  detail("- the C loop / wrk (libcurl's own distance from wrk): %.2fx", L.median(cw))
  detail("- the machine's CPU busy with other work just before each round (a round waits up to %g s for it "
    .. "to drop under %.0f%%): %s", C.quiet_wait, QUIET * 100, table.concat(bz, ", "))

  -- Where the client's time goes, per call (same process, same connection).
  local out = run(string.format("%s %s/bench/worker.lua breakdown %s %d", LUA, root, q(SMALL_BASE),
    math.max(2000, math.floor(C.client / 2))))
  local raw, call, client, decode, lua = kv(out, "raw"), kv(out, "call"), kv(out, "client"), kv(out, "decode"),
    kv(out, "lua")
  detail("- per call, one process: libcurl round trip through the client's handle (handle:request) %.1f us; "
    .. "+ envelope decode (handle:call) %.1f us; full client:call %.1f us. Alone: core.envelope of the answer "
    .. "%.1f us, the Lua layer with a stub transport %.1f us.", raw, call, client, decode, lua)
  facts["1"] = { bytes = #L.SMALL_BODY, raw = raw, call = call, client = client, decode = decode, lua = lua }
end)

---------------------------------------------------------------- 2. decoding

bench("2", "decoding a large answer", function()
  local out = run(string.format("%s %s/bench/worker.lua decode %s %s %d", LUA, root,
    q(nginx.url .. "/rest/1/big/"), q(big_file), C.decode_reps))
  local cj, co, cl = kv(out, "cjson"), kv(out, "core"), kv(out, "client")
  local r = cl / cj
  add_row { id = "2", name = string.format("decode %s rows: client:call over HTTP vs cjson.decode of the body alone",
      fmt_int(C.big_rows)),
    measured = string.format("%.2fx cjson's time (core.envelope alone: %.2fx)", r, co / cj),
    target = "<= 1.3x", met = r <= 1.3 }
  detail("Row 2: %s rows, %s bytes, median of %d interleaved reps: cjson.decode %.1f ms, core.envelope %.1f ms, "
    .. "client:call over HTTP %.1f ms.", fmt_int(kv(out, "rows")), fmt_int(kv(out, "bytes")), C.decode_reps,
    cj * 1e3, co * 1e3, cl * 1e3)
  facts["2"] = { cjson = cj, core = co, client = cl }
end)

---------------------------------------------------------------- 3. budget

bench("3", "budget efficiency", function()
  local leads, rate, burst = C.budget[1], C.budget[2], C.budget[3]
  -- budget.lua exits 1 when a job failed or the portal refused a request:
  -- that is a missed target, not a failure to run, so read its output.
  local out = L.sh(string.format("cd %s && LUA_VERSION=%s LUA=%s %s bench/budget.lua %d %g %d", q(root),
    LUA_VERSION, LUA, LUA, leads, rate, burst))
  local requests, ideal = out:match("requests=(%d+) %(ideal (%d+)%)")
  local rejected, jobs = kv(out, "rejected_503"), kv(out, "failed_jobs")
  local wall, minimum, ratio = kv(out, "wall"), kv(out, "minimum"), kv(out, "ratio")
  if not (requests and wall and minimum) then error("bench/budget.lua printed no result:\n" .. out, 0) end
  requests, ideal = tonumber(requests), tonumber(ideal)
  add_row { id = "3a", name = string.format("budget: HTTP requests for the contacts of %s leads (rate %g/s, burst %d)",
      fmt_int(leads), rate, burst),
    measured = string.format("%d (503s: %d, failed jobs: %d)", requests, rejected or -1, jobs or -1),
    target = tostring(ideal), met = requests == ideal and rejected == 0 and jobs == 0 }
  add_row { id = "3b", name = "budget: wall time vs the bucket's theoretical minimum",
    measured = string.format("%.3fx (%.1f s vs %.1f s)", ratio, wall, minimum),
    target = "<= 1.10x", met = ratio <= 1.10 }
  detail("Row 3 (bench/budget.lua %d %g %d): %s", leads, rate, burst, (out:gsub("\n+$", ""):gsub("\n", "; ")))
end)

---------------------------------------------------------------- 4. memory

bench("4", "memory", function()
  local n1, n2 = C.mem[1], C.mem[2]
  local out = run(string.format("%s %s/bench/worker.lua memory %s %d %d", LUA, root, q(SMALL_BASE), n1, n2))
  local rss1, rss2, lua1, lua2 = kv(out, "rss1"), kv(out, "rss2"), kv(out, "lua1"), kv(out, "lua2")
  local d = rss2 - rss1
  add_row { id = "4a", name = string.format("RSS after %s calls minus after %s", fmt_int(n2), fmt_int(n1)),
    measured = string.format("%+d KiB (Lua heap %+.0f KiB)", d, lua2 - lua1), target = "< 1 MiB apart",
    met = math.abs(d) < 1024 }
  detail("Row 4a: VmRSS %s KiB after %s calls, %s KiB after %s; Lua heap %.0f / %.0f KiB.", fmt_int(rss1),
    fmt_int(n1), fmt_int(rss2), fmt_int(n2), lua1, lua2)

  local small, large = C.export[1], C.export[2]
  local function export(n)
    local o = run(string.format("%s %s/bench/worker.lua export %s %d", LUA, root,
      q(nginx.url .. "/rest/1/p" .. n .. "/"), n))
    if not o:find("reset=true") then error("cannot reset VmHWM (/proc/self/clear_refs): " .. o, 0) end
    return kv(o, "peak") - kv(o, "rss0"), kv(o, "lua_peak")
  end
  local g1, lp1 = export(small)
  local g2, lp2 = export(large)
  add_row { id = "4b", name = string.format("peak RSS growth of a %s-row client:each export (page_batch = 1) "
      .. "vs a %s-row one", fmt_int(large), fmt_int(small)),
    measured = string.format("+%d KiB vs +%d KiB", g2, g1), target = "bounded by a page: within 1 MiB",
    met = g2 - g1 < 1024 }
  detail("Row 4b: crm.lead.list paged 50 rows a request (start/next) from the bench nginx; peak RSS growth "
    .. "(VmHWM after the export minus VmRSS before it) %d KiB for %s rows, %d KiB for %s rows; Lua heap peak "
    .. "%.0f / %.0f KiB.", g1, fmt_int(small), g2, fmt_int(large), lp1, lp2)
end)

---------------------------------------------------------------- 5. nginx

bench("5", "nginx: the client in a location vs proxy_pass", function()
  -- The transport is another engineer's work in progress: say what state
  -- it is in, then measure it anyway.
  local state = L.exists(root .. "/lua/bitrix24/transport/nginx.lua") and "present" or "missing"
  local probe = L.sh("curl -s -m 10 " .. q(nginx.url .. "/via-client"))
  if not probe:find('"CONTACT_ID"', 1, true) then
    error("lua/bitrix24/transport/nginx.lua is " .. state .. "; /via-client answered: " .. probe:sub(1, 500)
      .. "\n" .. (L.read_file(nginx.prefix .. "/error.log") or ""):sub(-1500), 0)
  end
  local function wrk(path)
    local out = run(string.format("wrk -t1 -c1 -d%ds %s", C.nginx_wrk_s, q(nginx.url .. path)))
    if out:find("Non%-2xx") or out:find("Socket errors") then error("wrk " .. path .. ": errors:\n" .. out, 0) end
    return assert(tonumber(out:match("Requests/sec:%s*([%d%.]+)")), "no Requests/sec in wrk output")
  end
  local ratios, added, lc, lp = {}, {}, {}, {}
  for r = 1, C.nginx_rounds do
    L.wait_quiet(QUIET, C.quiet_wait)
    local a, b
    if r % 2 == 1 then a = wrk("/via-client"); b = wrk("/via-proxy")
    else b = wrk("/via-proxy"); a = wrk("/via-client") end
    lc[r], lp[r] = 1e6 / a, 1e6 / b
    ratios[r] = lc[r] / lp[r]
    added[r] = lc[r] - lp[r]
    log("   round %d client %.0f us proxy_pass %.0f us", r, lc[r], lp[r])
  end
  local m = L.median(ratios)
  add_row { id = "5", name = "nginx: per-request latency of a location calling the fake portal through the client "
      .. "vs the same request with proxy_pass",
    measured = string.format("%.2fx proxy_pass's (+%.0f us a request)", m, L.median(added)),
    target = "<= 2x (ours; the issue sets none)", met = m <= 2 }
  detail("Row 5: wrk -t1 -c1 -d%ds against the bench nginx, %d rounds; median latency %.0f us (client location) "
    .. "vs %.0f us (proxy_pass, upstream keep-alive); transport file %s.", C.nginx_wrk_s, C.nginx_rounds,
    L.median(lc), L.median(lp), state)
end)

---------------------------------------------------------------- 6, 7

-- What the rows of the later issues need from this file.
local ctx = {
  root = root, L = L, C = C, SMOKE = SMOKE, LUA = LUA, LUA_VERSION = LUA_VERSION, tmp = tmp, nginx = nginx,
  bench = bench, add_row = add_row, detail = detail, log = log, run = run, kv = kv, rate_of = rate_of,
  fmt_int = fmt_int, facts = facts, notes = notes, wait_quiet = function() return L.wait_quiet(QUIET, C.quiet_wait) end,
}
dofile(root .. "/bench/rows_pipeline.lua")(ctx)
dofile(root .. "/bench/rows_export.lua")(ctx)
dofile(root .. "/bench/rows_redis.lua")(ctx)

end)

cleanup()
if not ok_all then
  log("bench: %s", tostring(top_err))
  failed[#failed + 1] = "setup"
end

---------------------------------------------------------------- report

local function table_text()
  local out = {
    "| # | benchmark | measured | target | met |",
    "|---|---|---|---|---|",
  }
  for _, r in ipairs(rows) do
    local met = r.met == true and "yes" or r.met == false and "**NO**" or "-"
    out[#out + 1] = string.format("| %s | %s | %s | %s | %s |", r.id, r.name, r.measured, r.target, met)
  end
  return table.concat(out, "\n")
end

local tbl = table_text()
print(tbl)

local function first_line(cmd)
  local s = L.capture(cmd)
  return s:match("^[^\n]*") or ""
end
local function deb(p) return first_line("dpkg-query -W -f='${Version}' " .. p .. " 2>/dev/null") end

if OUT then
  local machine = {
    "- nproc: " .. first_line("nproc"),
    "- CPU: " .. (first_line("grep -m1 'model name' /proc/cpuinfo"):gsub("^model name%s*:%s*", "")),
    "- kernel: " .. first_line("uname -sr"),
    "- date: " .. os.date("!%Y-%m-%d %H:%M UTC"),
    "- mode: " .. (SMOKE and "smoke (small counts)" or "full"),
    "- load average at the start / end: " .. LOAD_START .. " / " .. first_line("cut -d' ' -f1-3 /proc/loadavg"),
  }
  local versions = {
    "- Lua: " .. first_line(LUA .. " -v 2>&1"),
    "- libcurl: " .. first_line("pkg-config --modversion libcurl") .. " (" .. first_line("curl --version") .. ")",
    "- nginx: " .. first_line("nginx -v 2>&1") .. ", libnginx-mod-http-lua " .. deb("libnginx-mod-http-lua"),
    "- lua-cjson: " .. deb("lua-cjson") .. ", lua-socket: " .. deb("lua-socket"),
    "- python3-requests: " .. deb("python3-requests") .. " (" .. first_line(PYTHON .. " --version 2>&1") .. ")",
    "- wrk: " .. deb("wrk"),
  }
  local notes_text = dofile(root .. "/bench/notes.lua")(rows, facts, notes, SMOKE)
  local doc = table.concat({
    "# Benchmarks",
    "",
    "Written by `make bench` (bench/run.lua); do not edit by hand. Every figure is a ratio to a peer measured "
      .. "in the same run, interleaved; absolute numbers below are context only.",
    "",
    tbl,
    "",
    "## Machine",
    "",
    table.concat(machine, "\n"),
    "",
    "## Versions",
    "",
    table.concat(versions, "\n"),
    "",
    "## Details",
    "",
    table.concat(details, "\n"),
    "",
    notes_text,
  }, "\n")
  L.write_file(OUT, doc)
  log("wrote %s", OUT)
end

if #failed > 0 then
  log("bench: failed to run: %s", table.concat(failed, ", "))
  os.exit(1)
end
os.exit(0)
