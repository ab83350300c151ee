-- The "Notes" section of bench/RESULTS.md: for each missed target, why and
-- what would close it, with this run's numbers. Called by bench/run.lua as
-- notes(rows, facts, failures, smoke) -> markdown text.

return function(rows, facts, failures, smoke)
  local out = { "## Notes", "" }
  local function say(fmt, ...) out[#out + 1] = string.format(fmt, ...) end
  local missed = {}
  for _, r in ipairs(rows) do if r.met == false then missed[r.id] = r end end

  if smoke then
    say("Smoke mode: counts too small for the ratios to mean much; run `make bench` for figures.")
    say("")
  end

  say("How to read it: rounds interleave the contenders (a rotating order), each headline figure is the "
    .. "median over the rounds of the ratio within a round. The machine is shared: other jobs come and go, "
    .. "so absolute rates swing by 2-3x between runs while the ratios hold far better.")
  say("")
  say("Setup: the bench starts its own nginx (1.22, ngx_lua) in a temporary prefix with `worker_processes 1`: "
    .. "row 1 measures one keep-alive connection, which a single worker serves however many there are, and on "
    .. "2 cores one worker leaves the other core to the client under test instead of making them fight over it. "
    .. "The canned answer is a `return 200 '<json>'` location (no Lua), so the server is not the bottleneck "
    .. "(wrk gets well above every libcurl contender from it). luasocket's `socket.http` does not keep "
    .. "connections alive: it opens and closes one TCP connection per call (on loopback that costs little, "
    .. "which is why it comes close). The client runs with `rate_limit = false`.")
  say("")

  local f1 = facts["1"]
  if missed["1a"] or missed["1b"] then
    local which = missed["1a"] and missed["1b"] and "Rows 1a and 1b" or missed["1a"] and "Row 1a" or "Row 1b"
    say("**%s missed: a round trip on loopback takes a few tens of microseconds, and the client does real "
      .. "work on top of it that neither the C loop nor wrk does.**", which)
    if f1 then
      say("Breakdown, measured in one process on one connection in this run (medians): a libcurl round trip "
        .. "through the client's own handle (`handle:request`, no decoding) takes %.1f us, the same with the "
        .. "envelope decoded (`handle:call`) %.1f us, and the full `client:call` %.1f us. Measured "
        .. "alone, decoding the %d-byte answer (cjson + the integer walk) takes %.1f us, and the Lua layer "
        .. "(checks, JSON encoding of the params, limiter and operating-time bookkeeping) with a stub "
        .. "transport %.1f us. The rest of the %.1f us between `client:call` and `handle:request` is the "
        .. "garbage those calls leave and the caches they evict between two syscalls. On 2 cores, the "
        .. "client's own CPU adds straight to the latency of a ping-pong with nginx. The libcurl part is the "
        .. "same as the C loop's: http.c sets its options once per handle and reuses the connection, and "
        .. "its per-call setopts (URL, headers, body) cost well under 1 us.",
        f1.raw, f1.call, f1.client, f1.bytes, f1.decode, f1.lua, f1.client - f1.raw)
    end
    say("What would close it: only a round trip long enough to hide that work. Against a real portal "
      .. "(10-100 ms a call), 10 us is 0.1%% or less, and the client and the C loop are equal. Reaching 0.95 on "
      .. "loopback would need the client's own work under ~1.5 us a call, which means not decoding at "
      .. "all, and a REST client has to decode. Smaller steps that would help: a decoder that produces Lua "
      .. "integers directly, with no walk over the tree (about 1 us here, more on large answers, see row "
      .. "2); the Lua layer already checks each method name once and reuses its per-method records. "
      .. "wrk is a hand-tuned C load generator with no per-request library "
      .. "overhead; libcurl alone stays well below it (the C loop's own ratio to wrk is in the details), so "
      .. "0.6 of wrk holds only while the machine is quiet.")
    say("")
  end
  if missed["1c"] then
    say("**Row 1c missed**: luasocket opens a connection per call; on loopback that is cheap, so the gap to a "
      .. "keep-alive client is small. Against a real portal (TLS, 10-100 ms away) keep-alive is worth one "
      .. "TCP+TLS handshake per call, several times more than here.")
    say("")
  end

  local f2 = facts["2"]
  if missed["2"] and f2 then
    local walk = f2.core - f2.cjson
    say("**Row 2 missed: the integer walk.** cjson.decode %.1f ms, core.envelope (cjson + the walk that turns "
      .. "integral floats into Lua integers) %.1f ms, the client over HTTP %.1f ms. The walk is %.1f ms "
      .. "(%.0f%% of cjson's time), the transfer and the rest %.1f ms. Debian's lua-cjson 2.1.0 pushes every "
      .. "number as a float, so every row's CONTACT_ID, SORT and ROLE_ID is visited and written back. "
      .. "What would close it: decode JSON in our own C parser (src/json.c has the encoder) that pushes "
      .. "integer literals as integers, which removes the walk entirely and also skips cjson's strtod for "
      .. "integers; the result would be the same tables (cjson.null for null, the same nesting limit). "
      .. "Profile (perf): cjson's own scanning and table building dominate the rest.",
      f2.cjson * 1e3, f2.core * 1e3, f2.client * 1e3, walk * 1e3, walk / f2.cjson * 100, (f2.client - f2.core) * 1e3)
    say("")
  end

  if missed["3a"] or missed["3b"] then
    say("**Row 3 missed**: see bench/budget.lua's output in the details. The client keeps one unit of the "
      .. "bucket spare (the portal sees requests a little later than they are sent), so its floor is "
      .. "(requests - burst + 1) / rate, 2%% above the theoretical minimum for 5,000 leads; more than that is "
      .. "the machine's scheduling.")
    say("")
  end
  if missed["4a"] or missed["4b"] then
    say("**Row 4 missed**: memory grows with the number of calls or rows; that is a leak or a list held in "
      .. "memory, to be found with spec/leakcheck.lua / valgrind (make test-valgrind).")
    say("")
  end
  if missed["5"] then
    say("**Row 5 missed**: the client location costs more than twice a proxy_pass of the same request.")
    say("")
  end
  say("Row 5's location creates a client per request (as the README's example does; that is cheap, "
    .. "connections live in nginx's pool), calls the fake portal through the cosocket transport "
    .. "(lua/bitrix24/transport/nginx.lua) with `rate_limit = false`, and answers the rows re-encoded as "
    .. "JSON; the proxy_pass location sends the same POST through an upstream with keep-alive (as the "
    .. "transport pools its connections) and streams the portal's answer back untouched. The extra time is "
    .. "the HTTP exchange in Lua (header parsing in ngx_lua), the envelope decode and the re-encoding.")
  say("")
  say("Rows 6 and 7 measure against fake portals started by the bench (real nginx on loopback): every "
    .. "latency and call cost is a real wait (`ngx.sleep`), the bucket is the portal's own (a 503 when it "
    .. "overflows), and the requests are counted by the portal, not by the client. Their floors: the "
    .. "bucket's, (requests - burst) / rate, and the latency's, the requests' own time end to end divided by "
    .. "the requests in flight; the target is a factor over the larger. Row 6d runs the calls/s loop of "
    .. "row 1 on this tree and on `BENCH_BASE` in the same rounds.")
  local f6 = facts["6"] or {}
  if missed["6a"] or missed["6b"] then
    if f6.speedup and f6.speedup < 1.5 then
      say("")
      say("**Rows 6a/6b missed: no requests in flight.** `parallel = 8` ran %.2fx as fast as the sequential "
        .. "run: this client sends `lead_contacts`' batches one after another (`opts.parallel` has no effect), "
        .. "so each request waits out its latency alone. What closes it: issue 15's pipeline over libcurl's "
        .. "multi interface (`core.multi`).", f6.speedup)
    else
      say("")
      say("**Rows 6a/6b missed**: requests in flight, but the wall time is above the floor by more than the "
        .. "target allows (see the details: the 503s, the requests, the machine's load).")
    end
  end
  if missed["6c"] then
    say("")
    if f6.form == "sequential" then
      say("**Row 6c missed: no fan-out form.** The client has no `client:calls`, so the handler made its "
        .. "calls one after another (each waits out the portal's latency); the probe shows the worker stayed "
        .. "free meanwhile (cosockets yield). What closes it: issue 15's fan-out over `ngx.thread`.")
    else
      say("**Row 6c missed**: the fan-out took longer than 1.3x its floor; see the probe's figures in the "
        .. "details for whether the worker was blocked.")
    end
  end
  if missed["6d"] then
    say("")
    say("**Row 6d missed**: calls/s of this tree fell below the base's by more than the noise measured in the "
      .. "same rounds; the per-call path grew (see row 1's breakdown for where a call's time goes).")
  end
  local f7 = facts["7"] or {}
  if missed["7a"] or missed["7b"] or missed["7i"] then
    say("")
    say("**Rows 7a/7b/7i missed: one list call a request.** `client:each` asks for one page of 50 rows per "
      .. "HTTP request (%s requests for the export), whatever `opts.page_batch` says. What closes it: "
      .. "issue 16's batches of 50 list calls (2,500 rows a request: about N / 2,500 + 1 requests).",
      f7.requests or "2,001")
  end
  if missed["7c"] or missed["7d"] or missed["7f"] then
    say("")
    say("**Rows 7c/7d/7f missed**: an export's wall time is above 1.15x its floor; the row gives the requests "
      .. "and how many the portal had in flight at once.")
  end
  if missed["7e"] then
    say("")
    say("**Row 7e missed: the ranges of a parallel fast export do not keep 4 requests in flight throughout.** "
      .. "Its first request (the first and the last page) runs alone; the fake portal's one worker builds "
      .. "each batch of 2,500 rows in turn (about 20 ms), so requests sent together come back staggered; "
      .. "and 43 ranges over 4 slots leave one slot idle in the last round. The floor, every request's time "
      .. "divided by the most in flight, assumes 4 all along.")
  end
  if missed["7h"] then
    say("")
    say("**Row 7h missed**: the export's peak memory grows with the rows exported: a batch or the rows are "
      .. "held beyond the batches in flight.")
  end
  if missed["7j"] then
    say("")
    say("**Row 7j missed**: one of the npm clients exported faster with its defaults; with one page a request "
      .. "this client is bound by the bucket like b24jssdk, while @2bad/bitrix sends batches of 50 list calls.")
  end
  say("")
  say("Rows 7i/7j run the npm packages with their defaults, as their users would: @bitrix24/b24jssdk's "
    .. "`fetchList` walks `ID > last` with `start = -1`, one request a page of 50 rows, paced by its own bucket "
    .. "(50, then 2 a second); @2bad/bitrix's `list` makes one counted call, then sends every remaining page "
    .. "as batches of 50 `start = N` sub-calls, paced by its own queue at 2 requests a second, holding all rows "
    .. "in memory. b24jssdk's request count comes from the portal without a bucket (its own bucket lifted).")
  for id, text in pairs(failures) do
    say("")
    say("**Row %s failed to run.** %s", id, text)
  end
  return table.concat(out, "\n") .. "\n"
end
