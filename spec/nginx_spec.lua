-- The client inside a real nginx (Debian's nginx-light with
-- libnginx-mod-http-lua, i.e. OpenResty's LuaJIT): non-blocking calls
-- through cosockets, the same answers and errors as libcurl, the shared
-- rate-limit budget, the phases where calls are refused.
--
-- The nginx.conf is docs/nginx.md's own example (the fenced block after the
-- marker line), with only the install paths and the port replaced, plus
-- the test locations of spec/nginx/app.lua. So the README's snippet is
-- what is tested.
--
-- The nginx runs LuaJIT whichever Lua runs busted, so this file runs under
-- one version of the multi-version suite only (5.4, the default) and is
-- pending under the others.

local support = require "support"
local nginx = require "nginx_harness"
local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"

local MARKER = "<!-- nginx.conf used by spec/nginx_spec.lua -->"
-- README placeholders and what replaces them (see docs/nginx.md).
local LUA_DIR_PLACEHOLDER = "/usr/local/share/lua/5.1/"
local CORE_DIR_PLACEHOLDER = "/usr/local/lib/lua/5.1/"
local LISTEN_PLACEHOLDER = "listen 8080;"

local quote, capture, write_file = support.quote, support.capture, support.write_file

-- Plain-text replacement that insists the text is there: a README edit
-- that drops a placeholder must fail here, not run a different config.
local function replace(s, old, new)
  local a, b = s:find(old, 1, true)
  assert(a, "README's nginx.conf lost " .. old)
  return s:sub(1, a - 1) .. new .. s:sub(b + 1)
end

local function readme_block()
  local readme = support.read_file(support.ROOT .. "/docs/nginx.md")
  local at = assert(readme:find(MARKER, 1, true), "docs/nginx.md has no line " .. MARKER)
  local block = readme:match("^%s*```nginx\n(.-)\n```", at + #MARKER)
  return assert(block, "no ```nginx block right after " .. MARKER)
end

local function urlencode(s)
  return (s:gsub("[^%w%-%._~/]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- A GET with its own timeout (socket.http's TIMEOUT is shared by every spec).
local function get(url)
  local chunks = {}
  local ok, status = http.request {
    url = url, sink = ltn12.sink.table(chunks),
    create = function()
      local s = socket.tcp()
      s:settimeout(60)
      return s
    end,
  }
  assert(ok, "GET " .. url .. ": " .. tostring(status))
  return status, table.concat(chunks)
end

local function get_json(url)
  local status, body = get(url)
  local ok, t = pcall(cjson.decode, body)
  assert(ok and type(t) == "table", "GET " .. url .. ": " .. tostring(status) .. " " .. body)
  return t, status, body
end

describe("inside nginx #nginx", function()
  if not nginx.runs_here() then
    pending(nginx.PENDING)
    return
  end

  local ROOT = nginx.root()
  local portal, ngx_server, readme_url, base, stub_url

  local function error_log() return ngx_server:error_log() end

  -- Waits (up to `wait` s) for text in nginx's error log.
  local function log_has(text, wait)
    local deadline = socket.gettime() + (wait or 3)
    repeat
      if error_log():find(text, 1, true) then return true end
      socket.sleep(0.05)
    until socket.gettime() > deadline
    return false
  end

  local function conf(prefix, readme_port, test_port, stub_ports)
    local block = readme_block()
    block = replace(block, LUA_DIR_PLACEHOLDER, ROOT .. "/lua/")
    block = replace(block, CORE_DIR_PLACEHOLDER, ROOT .. "/build/luajit/")
    block = replace(block, LISTEN_PLACEHOLDER, "listen 127.0.0.1:" .. readme_port .. ";")
    local app = ROOT .. "/spec/nginx/app.lua"
    -- The harness's own http-level lines, right after "http {".
    local tests = nginx.http_lines(prefix)
    for _, line in ipairs {
      'lua_shared_dict spec 1m;',
      -- A call in init_worker, not from a timer: must raise the phase error.
      'init_worker_by_lua_block {',
      '  require("bitrix24").from_env({ rate = 1000, burst = 100000 }):call("crm.lead.contact.fields")',
      '}',
      'server {',
      '  listen 127.0.0.1:' .. test_port .. ';',
      '  location /t/ { content_by_lua_file "' .. app .. '"; }',
      '  location /t/ca/ {',
      '    lua_ssl_trusted_certificate "' .. portal.ca_file .. '";',
      '    rewrite ^/t/ca/(.*)$ /t/$1 break;',
      '    content_by_lua_file "' .. app .. '";',
      '  }',
      '  location = /t/logphase {',
      '    content_by_lua_block { ngx.say("ok") }',
      '    log_by_lua_block {',
      '      require("bitrix24").from_env({ rate = 1000, burst = 100000 }):call("crm.lead.contact.fields")',
      '    }',
      '  }',
      '}',
      'server {',
      '  listen 127.0.0.1:' .. stub_ports[1] .. ';',
      '  listen 127.0.0.1:' .. stub_ports[2] .. ';',
      '  listen 127.0.0.1:' .. stub_ports[3] .. ';',
      '  location /s/ { content_by_lua_file "' .. app .. '"; }',
      '  location = /s/close { keepalive_timeout 0; content_by_lua_file "' .. app .. '"; }',
      '}',
    } do tests[#tests + 1] = line end
    block = replace(block, "http {\n", "http {\n    " .. table.concat(tests, "\n    ") .. "\n\n")
    return table.concat({
      "# Generated by spec/nginx_spec.lua: docs/nginx.md's block below the first lines.",
      nginx.main_lines(prefix, 1024),
      "",
      block,
    }, "\n")
  end

  support.use_portal({ tls = true }, function(p) portal = p end)   -- with TLS, for the https cases

  setup(function()
    local readme_port, port = nginx.free_port(), nginx.free_port()
    local stub_ports = { nginx.free_port(), nginx.free_port(), nginx.free_port() }
    readme_url = "http://127.0.0.1:" .. readme_port
    base = "http://127.0.0.1:" .. port
    local stub_urls = {}
    for i, p in ipairs(stub_ports) do stub_urls[i] = "http://127.0.0.1:" .. p end
    stub_url = stub_urls[1]
    ngx_server = nginx.launch(port, function(prefix)
      write_file(prefix .. "/spec-config.json", cjson.encode {
        webhook_url = portal.webhook_url, stub_urls = stub_urls,
        oauth = {
          endpoint = portal.oauth_endpoint, token_url = portal.token_url,
          access_token = portal.access_token, refresh_token = portal.refresh_token,
          client_id = portal.client_id, client_secret = portal.client_secret,
        },
      })
      return conf(prefix, readme_port, port, stub_ports)
    end, { BITRIX24_WEBHOOK_URL = portal.webhook_url })
  end)

  teardown(function()
    if ngx_server then ngx_server:stop() end
  end)

  -- The wall time of n concurrent GETs (curl --parallel), and their statuses.
  local function parallel(urls)
    local list = {}
    for i, u in ipairs(urls) do list[i] = "-o /dev/null " .. quote(u) end
    local started = socket.gettime()
    local out = capture("curl -s --max-time 60 --parallel --parallel-immediate --parallel-max "
      .. #urls .. " -w '%{http_code}\\n' " .. table.concat(list, " ") .. " 2>/dev/null")   -- (-s does not mute --parallel's meter)
    local elapsed = socket.gettime() - started
    local statuses = {}
    for code in out:gmatch("%d+") do statuses[code] = (statuses[code] or 0) + 1 end
    return elapsed, statuses
  end

  local function urls(path, n)
    local t = {}
    for i = 1, n do t[i] = base .. path .. (path:find("?", 1, true) and "&" or "?") .. "n=" .. i end
    return t
  end

  describe("the README's location", function()
    it("answers with the portal's rows: integers stay integers, Y/N stay strings", function()
      local status, body = get(readme_url .. "/lead-contacts?id=1")
      assert.equal(200, status, body)
      -- What a direct (libcurl) call returns, compared literal by literal.
      local bitrix24 = require "bitrix24"
      local direct = assert(bitrix24.webhook(portal.webhook_url, support.opts()):call(
        "crm.lead.contact.items.get", { id = 1 }))
      assert.is_nil(support.diff(direct, support.reference_json(body)))
      assert.matches('"CONTACT_ID":1010', body, 1, true)
      assert.matches('"IS_PRIMARY":"Y"', body, 1, true)
      assert.matches('"IS_PRIMARY":"N"', body, 1, true)
      local seen = portal:requests()
      assert.equal("crm.lead.contact.items.get", seen[#seen].method)
      assert.matches("^bitrix24%-lua/", seen[#seen].user_agent)
    end)

    it("answers 400 without an id", function()
      assert.equal(400, (get(readme_url .. "/lead-contacts")))
    end)
  end)

  describe("does not block the worker", function()
    local N, DELAY = 50, 0.2

    it("50 calls of 200 ms through cosockets finish within 1 s together", function()
      portal:fault { method = "crm.lead.contact.items.get", kind = "latency", delay = DELAY, times = N }
      local elapsed, statuses = parallel(urls("/t/call", N))
      io.stderr:write(string.format("\n[nginx_spec] cosocket transport: %d x %.0f ms calls in %.2f s\n",
        N, DELAY * 1000, elapsed))
      assert.same({ ["200"] = N }, statuses)
      assert.is_true(elapsed < 1, string.format("took %.2f s", elapsed))
    end)

    -- Fewer calls: one at a time, 50 would take 10 s to show the same.
    local N_CURL = 10

    it("10 such calls forced through libcurl take about 10 x 200 ms, one at a time", function()
      portal:fault { method = "crm.lead.contact.items.get", kind = "latency", delay = DELAY, times = N_CURL }
      local elapsed, statuses = parallel(urls("/t/call?transport=curl", N_CURL))
      io.stderr:write(string.format("\n[nginx_spec] curl transport (blocking): %d x %.0f ms calls in %.2f s\n",
        N_CURL, DELAY * 1000, elapsed))
      assert.same({ ["200"] = N_CURL }, statuses)
      -- More than half of the calls' delays end to end (concurrent: 0.2 s).
      assert.is_true(elapsed > N_CURL * DELAY / 2, string.format("took %.2f s", elapsed))
    end)
  end)

  describe("errors", function()
    local refused = "http://127.0.0.1:" .. nginx.free_port() .. "/rest/1/x/"

    -- name, fault (registered before each transport's try), query
    local cases = {
      { "a portal error envelope", nil, "id=13" },
      { "an unknown method", nil, "method=crm.lead.contact.nosuch" },
      { "HTML from a proxy (502)", { kind = "html502" }, "" },
      { "a 500 envelope", { kind = "error500" }, "" },
      { "an error with HTTP 200", { kind = "error200" }, "" },
      { "a redirect to another host", { kind = "redirect" }, "" },
      { "malformed JSON", { kind = "malformed" }, "" },
      { "a truncated answer", { kind = "truncate" }, "" },
      { "a timeout", { kind = "latency", delay = 1 }, "timeout=0.3" },
      { "an answer over max_response", nil, "max_response=20" },
      { "a refused connection", nil, "url=" .. urlencode(refused) },
    }

    for _, case in ipairs(cases) do
      it("map to the same code as with libcurl: " .. case[1], function()
        local got = {}
        for _, transport in ipairs { "nginx", "curl" } do
          if case[2] then
            local f = { method = "crm.lead.contact.items.get", times = 1 }
            for k, v in pairs(case[2]) do f[k] = v end
            portal:fault(f)
          end
          got[transport] = get_json(base .. "/t/call?transport=" .. transport .. "&" .. case[3])
        end
        local n, c = got.nginx, got.curl
        assert.is_false(c.ok, cjson.encode(c))
        assert.is_false(n.ok, cjson.encode(n))
        assert.equal(c.code, n.code, cjson.encode(got))
        assert.equal(c.status, n.status, cjson.encode(got))
        if c.status and c.code ~= "PORTAL_MOVED" then
          -- The same C code judged the same answer (up to sizes and
          -- positions: the answers' timing fields differ in length).
          assert.equal(c.description:match("^[^(]*"), n.description:match("^[^(]*"))
        end
      end)
    end

    it("PORTAL_MOVED names the new address, as with libcurl", function()
      portal:fault { method = "crm.lead.contact.items.get", kind = "redirect", times = 1 }
      local n = get_json(base .. "/t/call")
      portal:fault { method = "crm.lead.contact.items.get", kind = "redirect", times = 1 }
      local c = get_json(base .. "/t/call?transport=curl")
      assert.equal("PORTAL_MOVED", n.code)
      assert.equal(c.description, n.description)
    end)
  end)

  describe("TLS", function()
    local function https_url(host)
      return urlencode(portal.https_webhook_url:gsub("127%.0%.0%.1", host))
    end

    -- First: afterwards nginx's pool holds a connection verified with the
    -- portal's CA, which a location without that CA would reuse.
    it("fails with TLS_ERROR, as libcurl does, when the CA is not trusted", function()
      local n = get_json(base .. "/t/call?url=" .. https_url("localhost"))
      local c = get_json(base .. "/t/call?transport=curl&url=" .. https_url("localhost"))
      assert.equal("TLS_ERROR", n.code, cjson.encode(n))
      assert.equal("TLS_ERROR", c.code, cjson.encode(c))
      assert.matches("lua_ssl_trusted_certificate", n.description, 1, true)
      assert.not_matches("opts.ca_file", n.description, 1, true)
    end)

    it("verifies the portal against lua_ssl_trusted_certificate, by host name", function()
      local r = get_json(base .. "/t/ca/call?url=" .. https_url("localhost"))
      assert.is_true(r.ok, cjson.encode(r))
      assert.equal(1010, r.rows[1].CONTACT_ID)
    end)

    it("checks the host name: an IP address in the URL fails in nginx (libcurl accepts an IP SAN)", function()
      -- nginx matches certificates against DNS names only; portals have names.
      for _ = 1, 10 do   -- repeated: ngx_lua sometimes reports this failure late (see the transport)
        local r = get_json(base .. "/t/ca/call?url=" .. urlencode(portal.https_webhook_url))
        assert.equal("TLS_ERROR", r.code, cjson.encode(r))
      end
    end)

    it("skips verification with tls_verify = false", function()
      local r = get_json(base .. "/t/call?tls_verify=0&url=" .. https_url("localhost"))
      assert.is_true(r.ok, cjson.encode(r))
    end)

    it("refuses opts.ca_file and opts.proxy at creation, saying what to do instead", function()
      local r = get_json(base .. "/t/ca_file")
      assert.is_false(r.ok)
      assert.matches("lua_ssl_trusted_certificate", r.err, 1, true)
      assert.is_false(r.proxy_ok)
      assert.matches("proxy is not supported inside nginx", r.proxy_err, 1, true)
    end)
  end)

  describe("connections", function()
    it("sequential calls share one keep-alive connection to the portal", function()
      local r = get_json(base .. "/t/seq?n=5")
      assert.is_true(r.ok, cjson.encode(r))
      local seen = portal:requests()
      assert.equal(5, #seen)
      for i = 2, 5 do assert.equal(seen[1].conn, seen[i].conn) end
      -- ... and so do separate requests of the same worker.
      get_json(base .. "/t/seq?n=1")
      assert.equal(seen[1].conn, portal:requests()[6].conn)
    end)

    local function transport(query)
      local r = get_json(base .. "/t/transport?" .. query)
      r.calls.after_close = r.after_close
      return r.calls
    end

    it("reads Content-Length and chunked bodies, and keeps the connection", function()
      local r = transport("path=/s/length&path=" .. urlencode("/s/chunked?size=5000") .. "&path=/s/length")
      assert.equal(200, r[1].status)
      assert.equal(5000, #r[2].result.pad)
      assert.equal(r[1].result.conn, r[2].result.conn)
      assert.equal(r[1].result.conn, r[3].result.conn)
    end)

    it("does not reuse a connection the server closes (Connection: close)", function()
      local r = transport("path=/s/close&path=/s/close")
      assert.equal(200, r[1].status)
      assert.equal(200, r[2].status)
      assert.are_not.equal(r[1].result.conn, r[2].result.conn)
    end)

    it("reads a body that ends with the connection", function()
      local r = transport("path=/s/eof")
      assert.is_true(r[1].result.eof, cjson.encode(r))
    end)

    it("resends once on a fresh connection when a reused one closes before answering", function()
      local before = get_json(base .. "/t/hits").flaky or 0
      local r = transport("base=3&path=/s/flaky&path=/s/flaky")
      assert.equal(200, r[1].status, cjson.encode(r))
      assert.equal(200, r[2].status, cjson.encode(r))
      assert.are_not.equal(r[1].result.conn, r[2].result.conn)
      assert.equal(before + 3, get_json(base .. "/t/hits").flaky)
    end)

    it("does not resend when a fresh connection closes (the request may have run)", function()
      local before = get_json(base .. "/t/hits").drop or 0
      local r = transport("base=2&path=/s/drop")
      assert.equal("NETWORK_ERROR", r[1].code, cjson.encode(r))
      assert.equal(before + 1, get_json(base .. "/t/hits").drop)
    end)

    it("limits the answer's size with max_response, chunked or not", function()
      local r = transport("max_response=1000&path=" .. urlencode("/s/chunked?size=5000")
        .. "&path=" .. urlencode("/s/length") .. "&path=" .. urlencode("/s/chunked?size=100"))
      assert.equal("RESPONSE_TOO_LARGE", r[1].code, cjson.encode(r))
      assert.equal(200, r[2].status)
      assert.equal(200, r[3].status)
      r = transport("max_response=10&path=/s/length")
      assert.equal("RESPONSE_TOO_LARGE", r[1].code, cjson.encode(r))
    end)

    it("reports a redirect with its absolute Location, a timeout, and error envelopes", function()
      local r = transport("timeout=0.3&path=/s/redirect&path=" .. urlencode("/s/slow?delay=1") .. "&path=/s/error")
      assert.equal("PORTAL_MOVED", r[1].code)
      assert.equal(302, r[1].status)
      assert.equal(stub_url .. "/elsewhere/", r[1].extra)
      assert.equal("TIMEOUT", r[2].code)
      assert.equal("ERROR_ARGUMENT", r[3].code)
      assert.equal(400, r[3].status)
      assert.matches("closed", r.after_close)
    end)

    it("request() returns any status with its body (GET without a body)", function()
      local r = transport("raw=1&get=1&path=/s/redirect&path=/s/error")
      assert.equal(302, r[1].status)
      assert.equal(400, r[2].status)
      assert.matches("ERROR_ARGUMENT", r[2].body, 1, true)
    end)

    it("refreshes an expired OAuth token through request()", function()
      portal:expire_tokens()
      local r = get_json(base .. "/t/oauth")
      assert.is_true(r.ok, cjson.encode(r))
      assert.is_true(r.refreshed)
    end)
  end)

  describe("the shared budget", function()
    it("is the default with lua_shared_dict bitrix24, and paces concurrent requests", function()
      portal:configure { rate = 10, burst = 5 }
      local elapsed, statuses = parallel(urls("/t/paced?rate=10&burst=5", 20))
      assert.same({ ["200"] = 20 }, statuses)
      local stats = portal:stats()
      assert.equal(20, stats.by_status["200"], cjson.encode(stats))
      assert.is_nil(stats.by_status["503"])
      -- 4 at once (one unit of the burst is kept spare), then 10 a second.
      assert.is_true(elapsed > 1.4, string.format("took %.2f s", elapsed))
      local keys = get_json(base .. "/t/budget_keys").keys
      assert.is_truthy(table.concat(keys, " "):find("bitrix24:budget:" .. portal.url, 1, true))
    end)

    it("without pacing the same requests meet 503s (the check above means something)", function()
      portal:configure { rate = 10, burst = 5 }
      parallel(urls("/t/paced?rate=10&burst=5&transport=nginx&nolimit=1", 20))
      assert.is_true((portal:stats().by_status["503"] or 0) > 0)
    end)

    it("waits for the lock another worker holds, without blocking", function()
      local r = get_json(base .. "/t/lock")
      assert.equal("done", r.result, cjson.encode(r))
      assert.is_true(r.after_release)
      assert.is_true(r.waited >= 0.09)
      assert.equal(1, r.n)
    end)
  end)

  describe("OAuth", function()
    it("concurrent requests meeting an expired token refresh it once between them", function()
      portal:reset { tokens = true }
      local info = portal:info()
      portal:expire_tokens()
      local path = "/t/oauth_shared?store=concurrent" .. os.time() .. "&access_token=" .. info.access_token
        .. "&refresh_token=" .. info.refresh_token
      local _, statuses = parallel(urls(path, 20))
      assert.same({ ["200"] = 20 }, statuses)
      local refreshes, ok = 0, 0
      for _, r in ipairs(portal:requests()) do
        if r.method == "oauth.token" then refreshes = refreshes + 1 end
        if r.method == "crm.lead.contact.items.get" and r.status == 200 then ok = ok + 1 end
      end
      assert.equal(1, refreshes)
      assert.equal(20, ok)
    end)
  end)

  -- (After the OAuth tests of config.oauth's tokens: these reset them.)
  describe("fan-out (client:calls with parallel) #nginx", function()
    local N, DELAY = 50, 0.2

    -- Starts a GET in the background; returns a function giving its body.
    local function background_get(url)
      local out = os.tmpname()
      os.execute("curl -s --max-time 60 -o " .. quote(out) .. " " .. quote(url) .. " &")
      return function()
        local deadline = socket.gettime() + 60
        while socket.gettime() < deadline do
          local body = support.read_file(out)
          local ok, t = pcall(cjson.decode, body)
          if ok and type(t) == "table" then
            os.remove(out)
            return t
          end
          socket.sleep(0.05)
        end
        error("no answer from " .. url)
      end
    end

    it("one handler's 50 calls of 200 ms, 10 in flight, while the worker answers others", function()
      portal:fault { method = "crm.lead.contact.items.get", kind = "latency", delay = DELAY, times = N }
      local result = background_get(base .. "/t/fanout?n=" .. N .. "&parallel=10")
      socket.sleep(0.3)
      -- A probe to the same (only) worker while the fan-out is under way.
      local t0 = socket.gettime()
      local status = get(base .. "/t/hits")
      local probe = socket.gettime() - t0
      local r = result()
      io.stderr:write(string.format("\n[nginx_spec] fan-out: %d x %.0f ms calls, 10 in flight, in %.2f s;"
        .. " probe answered in %.3f s\n", N, DELAY * 1000, r.elapsed, probe))
      assert.equal(200, status)
      -- One by one they would take 10 s; 10 at a time, about 1 s.
      assert.is_true(r.elapsed < 5, string.format("took %.2f s", r.elapsed))
      assert.is_true(probe < r.elapsed, string.format("probe %.2f s, fan-out %.2f s", probe, r.elapsed))
      -- Each result at its own index: what a direct call returns for that lead.
      local bitrix24 = require "bitrix24"
      local direct = bitrix24.webhook(portal.webhook_url, support.opts())
      for i = 1, N do
        local rows, err = direct:call("crm.lead.contact.items.get", { id = i })
        if rows then
          assert.same(rows, r.results[i], "lead " .. i)
        else
          assert.equal(err.code, r.codes[i])
        end
      end
      direct:close()
    end)

    it("an expired OAuth token is refreshed once for all the calls in flight", function()
      portal:reset { tokens = true }
      local info = portal:info()
      portal:expire_tokens()
      local r = get_json(base .. "/t/fanout?n=20&parallel=10&oauth=1&access_token=" .. info.access_token
        .. "&refresh_token=" .. info.refresh_token)
      local refreshes = 0
      for _, q in ipairs(portal:requests()) do
        if q.method == "oauth.token" then refreshes = refreshes + 1 end
      end
      assert.equal(1, refreshes)
      for i = 1, 20 do
        if i ~= 13 then assert.is_table(r.results[i], "lead " .. i) end
      end
    end)

    it("close() or a raise from a callback stops the other threads", function()
      portal:fault { method = "crm.lead.contact.items.get", kind = "latency", delay = DELAY, times = 40 }
      local r = get_json(base .. "/t/fanout?n=40&parallel=4&stop=close")
      assert.is_table(r.results[1])
      assert.is_table(r.results[2])
      for i = 3, 40 do assert.equal("CANCELLED", r.codes[i]) end
      r = get_json(base .. "/t/fanout?n=40&parallel=4&stop=raise")
      assert.matches("stop here", r.raised)
      -- Each stop let only the requests in flight around it reach the portal.
      local items = 0
      for _, q in ipairs(portal:requests()) do
        if q.method == "crm.lead.contact.items.get" then items = items + 1 end
      end
      assert.is_true(items < 20, items .. " requests")
      -- Closed by on_request before anything is sent, one at a time or
      -- in threads: every call is CANCELLED, none reaches the portal.
      for _, parallel in ipairs { 1, 2 } do
        r = get_json(base .. "/t/fanout?n=3&stop=on_request&parallel=" .. parallel)
        assert.is_nil(r.raised, r.raised)
        for i = 1, 3 do assert.equal("CANCELLED", r.codes[i]) end
      end
      local after = 0
      for _, q in ipairs(portal:requests()) do
        if q.method == "crm.lead.contact.items.get" then after = after + 1 end
      end
      assert.equal(items, after)
      -- The worker goes on serving fan-outs afterwards.
      r = get_json(base .. "/t/fanout?n=5&parallel=5")
      for i = 1, 5 do assert.is_table(r.results[i]) end
    end)
  end)

  describe("client:each with parallel #nginx", function()
    it("keeps a window of requests in threads: the same ids as one at a time, and leaving early is clean", function()
      portal:reset { leads = 3000 }
      for _, fast in ipairs { "1", "0" } do
        local r = get_json(base .. "/t/each?parallel=3&page_batch=4&fast=" .. fast)
        assert.equal(3000, #r.one)
        assert.same(r.one, r.together)
        r = get_json(base .. "/t/each?parallel=3&page_batch=4&stop=450&fast=" .. fast)
        assert.equal(450, #r.together)
        for i = 1, 450 do assert.equal(r.one[i], r.together[i]) end
        assert.is_true(r.after)
      end
      portal:reset {}
    end)
  end)

  describe("phases without cosockets", function()
    it("a call in init_worker_by_lua raises an error naming the phase", function()
      assert.is_true(log_has("cannot call Bitrix24 in nginx's init_worker phase"), error_log())
    end)

    it("a call in log_by_lua raises an error naming the phase", function()
      assert.equal(200, (get(base .. "/t/logphase")))
      assert.is_true(log_has("cannot call Bitrix24 in nginx's log phase"), error_log())
    end)
  end)
end)
