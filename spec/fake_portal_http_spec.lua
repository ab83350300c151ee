-- The fake portal hosted in nginx, seen over real HTTP with the curl CLI.
local fake = require "bitrix24.fake.server"
local support = require "support"
local cjson = require "cjson"
local socket = require "socket"

local CURL = "curl -sS --max-time 5 "

local quote = support.quote

local function capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("*a")
  p:close()
  return out
end

-- One curl call. Returns status (number, 0 when there was no answer), body,
-- and curl's exit code (18: partial body, 52: empty reply, 60: bad certificate).
local function curl(args)
  local out = capture(CURL .. "-w '\\n%{http_code}' " .. args .. " 2>/dev/null; echo \" $?\"")
  local body, status, rc = out:match("^(.*)\n(%d+) (%d+)\n$")
  assert(body, "unexpected curl output: " .. out)
  return tonumber(status), body, tonumber(rc)
end

local function json_post(url, t)
  return curl("-H 'Content-Type: application/json' --data-binary " .. quote(cjson.encode(t)) .. " " .. quote(url))
end

local function decode(body)
  local ok, t = pcall(cjson.decode, body)
  assert(ok and type(t) == "table", "not a JSON object: " .. body)
  return t
end

-- A zombie counts as dead: nobody may reap an orphaned nginx in a container.
local function dead(pid)
  local f = io.open("/proc/" .. pid .. "/stat", "r")
  if not f then return true end
  -- (It may go between the open and the read: then the read finds nothing.)
  local stat = f:read("*a")
  f:close()
  return not stat or stat:match("%)%s+(%S)") == "Z"
end

local function dir_exists(path)
  local f = io.open(path .. "/.", "r")
  if f then f:close() end
  return f ~= nil
end

local eventually = support.eventually

describe("fake portal over HTTP", function()
  local portal
  local ITEMS = "crm.lead.contact.items.get"

  -- A generous bucket (the rate limit has its own portal below), with
  -- HTTPS; before each test a fresh log, faults, bucket and tokens (a
  -- spec may have expired them).
  support.use_portal({ tls = true, reset = { tokens = true } }, function(p) portal = p end)

  describe("webhooks", function()
    it("answers a method call with a result and logs it", function()
      local status, body = json_post(portal.webhook_url .. ITEMS, { id = 1 })
      assert.equal(200, status)
      local res = decode(body)
      assert.is_nil(res.error)
      assert.is_not_nil(res.result)
      local log = portal:requests()
      assert.equal(1, #log)
      assert.equal(ITEMS, log[1].method)
      assert.equal("POST", log[1].http_method)
    end)

    it("accepts the .json suffix as the same method", function()
      local status = json_post(portal.webhook_url .. ITEMS .. ".json", { id = 1 })
      assert.equal(200, status)
      assert.equal(ITEMS, portal:requests()[1].method)
    end)

    it("rejects a wrong webhook code with 401", function()
      local url = portal.webhook_url:gsub(portal.code, "wrong" .. portal.code)
      local status, body = json_post(url .. ITEMS, { id = 1 })
      assert.equal(401, status)
      local res = decode(body)
      assert.is_string(res.error)
      assert.is_nil(res.result)
    end)
  end)

  describe("OAuth", function()
    it("takes the token in the query string", function()
      local status, body = json_post(portal.oauth_endpoint .. ITEMS .. "?auth=" .. portal.access_token, { id = 1 })
      assert.equal(200, status)
      assert.is_nil(decode(body).error)
    end)

    it("takes the token in a JSON body", function()
      local status, body = json_post(portal.oauth_endpoint .. ITEMS, { id = 1, auth = portal.access_token })
      assert.equal(200, status)
      assert.is_nil(decode(body).error)
    end)

    it("answers 401 without a token", function()
      local status, body = json_post(portal.oauth_endpoint .. ITEMS, { id = 1 })
      assert.equal(401, status)
      assert.is_string(decode(body).error)
    end)

    local function refresh(token)
      return curl(quote(portal.token_url .. "?grant_type=refresh_token&client_id=" .. portal.client_id ..
                        "&client_secret=" .. portal.client_secret .. "&refresh_token=" .. token))
    end

    it("rotates tokens at the token endpoint; the old refresh token is then invalid_grant", function()
      local old = portal.refresh_token
      local status, body = refresh(old)
      assert.equal(200, status)
      local tokens = decode(body)
      assert.is_string(tokens.access_token)
      assert.is_string(tokens.refresh_token)
      assert.not_equal(old, tokens.refresh_token)

      status = json_post(portal.oauth_endpoint .. ITEMS, { id = 1, auth = tokens.access_token })
      assert.equal(200, status)

      status, body = refresh(old)
      assert.equal("invalid_grant", decode(body).error)
      assert.is_true(status >= 400)
    end)

    it("answers expired_token after expire_tokens", function()
      portal:expire_tokens()
      local status, body = json_post(portal.oauth_endpoint .. ITEMS, { id = 1, auth = portal.access_token })
      assert.equal(401, status)
      assert.equal("expired_token", decode(body).error)
    end)
  end)

  describe("connections", function()
    it("keeps one connection alive across requests", function()
      local url = quote(portal.webhook_url .. ITEMS .. "?id=1")
      -- One curl invocation with several URLs reuses its connection.
      capture(CURL .. "-o /dev/null -o /dev/null -o /dev/null " .. url .. " " .. url .. " " .. url)
      capture(CURL .. "-o /dev/null " .. url)
      local log = portal:requests()
      assert.equal(4, #log)
      assert.equal(log[1].conn, log[2].conn)
      assert.equal(log[1].conn, log[3].conn)
      assert.not_equal(log[1].conn, log[4].conn)
    end)

    it("delays one request without blocking the others", function()
      portal:fault{ method = ITEMS, kind = "latency", delay = 0.5, times = 5 }
      local url = quote(portal.webhook_url .. ITEMS .. "?id=1")
      local start = socket.gettime()
      local out = capture("for i in 1 2 3 4 5; do " .. CURL .. "-o /dev/null -w '%{http_code}\\n' " .. url ..
                          " & done; wait")
      local elapsed = socket.gettime() - start
      assert.equal(("200\n"):rep(5), out)
      assert.is_true(elapsed >= 0.5, "the latency fault was not applied: " .. elapsed)
      assert.is_true(elapsed < 1.5, "requests were served one after another: " .. elapsed)
    end)
  end)

  describe("faults as seen by curl", function()
    local function call()
      return json_post(portal.webhook_url .. ITEMS, { id = 1 })
    end

    it("html502: a 502 HTML page, once", function()
      portal:fault{ method = ITEMS, kind = "html502", times = 1 }
      local status, body = call()
      assert.equal(502, status)
      assert.matches("^%s*<", body)
      assert.equal(200, (call()))
    end)

    it("truncate: the body is cut short and the connection closed", function()
      portal:fault{ method = ITEMS, kind = "truncate" }
      local _, _, rc = call()
      assert.equal(18, rc)   -- CURLE_PARTIAL_FILE
    end)

    it("reset: the connection closes without an answer", function()
      portal:fault{ method = ITEMS, kind = "reset" }
      local status, _, rc = call()
      assert.equal(0, status)
      assert.equal(52, rc)   -- CURLE_GOT_NOTHING
    end)

    it("malformed: 200 with a body that is not JSON", function()
      portal:fault{ method = ITEMS, kind = "malformed" }
      local status, body = call()
      assert.equal(200, status)
      assert.is_false(pcall(cjson.decode, body))
    end)

    it("redirect: a 3xx to the same method under another base URL", function()
      -- A `location` ending in "/" is a new base: the method part is appended.
      portal:fault{ method = ITEMS, kind = "redirect", location = portal.url .. "/elsewhere/" }
      local out = capture(CURL .. "-o /dev/null -w '%{http_code} %{redirect_url}' " ..
                          quote(portal.webhook_url .. ITEMS .. "?id=1"))
      local status, location = out:match("^(%d+) (%S+)$")
      assert.is_truthy(tonumber(status) >= 300 and tonumber(status) < 400, out)
      assert.equal(portal.url .. "/elsewhere/" .. ITEMS .. "?id=1", location)
    end)

    it("redirect: by default to the moved portal on 127.0.0.2, which answers", function()
      assert.is_string(portal.moved_url, "127.0.0.2 is not available here")
      portal:fault{ method = ITEMS, kind = "redirect", times = 1 }
      local out = capture(CURL .. "-L -o /dev/null -w '%{http_code} %{url_effective}' " ..
                          quote(portal.webhook_url .. ITEMS .. "?id=1"))
      assert.equal("200 " .. portal.moved_url .. "/rest/1/" .. portal.code .. "/" .. ITEMS .. "?id=1", out)
    end)

    it("error200: an error envelope with status 200", function()
      portal:fault{ method = ITEMS, kind = "error200" }
      local status, body = call()
      assert.equal(200, status)
      assert.is_string(decode(body).error)
    end)

    it("error500: an error envelope with status 500", function()
      portal:fault{ method = ITEMS, kind = "error500" }
      local status, body = call()
      assert.equal(500, status)
      assert.is_string(decode(body).error)
    end)

    it("canned: exactly the given status and body", function()
      portal:fault{ method = ITEMS, kind = "canned", status = 418, body = '{"canned":true}' }
      local status, body = call()
      assert.equal(418, status)
      assert.equal('{"canned":true}', body)
    end)
  end)

  describe("HTTPS", function()
    it("works with the CA file", function()
      local status, body = curl("--cacert " .. quote(portal.ca_file) .. " " ..
                                quote(portal.https_webhook_url .. ITEMS .. "?id=1"))
      assert.equal(200, status)
      assert.is_nil(decode(body).error)
    end)

    it("fails certificate verification without it", function()
      local status, _, rc = curl(quote(portal.https_webhook_url .. ITEMS .. "?id=1"))
      assert.equal(0, status)
      assert.equal(60, rc)   -- CURLE_PEER_FAILED_VERIFICATION
    end)
  end)
end)

describe("fake portal rate limit", function()
  it("answers 503 QUERY_LIMIT_EXCEEDED once the burst is used up", function()
    local portal = fake.start{ tls = false, burst = 5, rate = 0.01 }
    finally(function() portal:stop() end)
    local url = quote(portal.webhook_url .. "crm.lead.contact.items.get?id=1")
    local n = 10
    local out = capture(CURL .. ("-o /dev/null -w '%{http_code}\\n' " .. url .. " "):rep(n))
    local codes = {}
    for code in out:gmatch("%d+") do codes[#codes + 1] = tonumber(code) end
    assert.equal(n, #codes)
    for i = 1, 5 do assert.equal(200, codes[i], out) end
    assert.equal(503, codes[n], out)
    local status, body = curl(url)
    assert.equal(503, status)
    assert.equal("QUERY_LIMIT_EXCEEDED", decode(body).error)

    -- configure() changes the limit of the running portal; stats() counts the answers.
    portal:configure{ burst = 1000 }
    assert.equal(200, (curl(url)))
    local stats = portal:stats()
    assert.equal(n + 2, stats.requests)
    assert.equal(n - 5 + 1, stats.by_status["503"])
  end)
end)

describe("fake portal lifetime", function()
  it("stop() kills nginx and removes the prefix; a second stop() is harmless", function()
    local portal = fake.start{ tls = false }
    assert.is_false(dead(portal.pid))
    portal:stop()
    assert.is_true(dead(portal.pid))
    assert.is_false(dir_exists(portal.prefix))
    portal:stop()
  end)

  it("the timeout stops nginx even without stop()", function()
    local portal = fake.start{ tls = false, timeout = 1 }
    finally(function() portal:stop() end)
    assert.is_false(dead(portal.pid))
    assert.is_true(eventually(3, function() return dead(portal.pid) end), "nginx outlived its timeout")
    assert.is_true(eventually(1, function() return not dir_exists(portal.prefix) end))
  end)

  it("nginx stops when the process that started it exits without stop()", function()
    local lua = support.LUA
    local out = capture(quote(lua) .. " -e " .. quote(
      "package.path = 'lua/?.lua;' .. package.path " ..
      "local p = require('bitrix24.fake.server').start{ tls = false } print(p.pid, p.prefix)"))
    local pid, prefix = out:match("^(%d+)%s+(%S+)")
    assert.is_truthy(pid, out)
    assert.is_true(eventually(3, function() return dead(pid) end), "nginx outlived its owner")
    assert.is_true(eventually(1, function() return not dir_exists(prefix) end))
  end)
end)

describe("b24-fake-portal", function()
  it("prints the webhook URL first and stops cleanly on SIGTERM", function()
    local out_file = os.tmpname()
    finally(function() os.remove(out_file) end)
    local sh_pid = tonumber(capture("bin/b24-fake-portal --code cmdcode >" .. quote(out_file) ..
                                    " 2>&1 </dev/null & echo $!"))
    local function read_out()
      local f = io.open(out_file, "r")
      local s = f and f:read("*a") or ""
      if f then f:close() end
      return s
    end
    -- Stop it whatever happens below.
    finally(function() os.execute("kill -TERM " .. sh_pid .. " 2>/dev/null") end)
    assert.is_true(eventually(5, function() return read_out():find("\npid %d+\n") ~= nil end), read_out())

    local out = read_out()
    local first = out:match("^([^\n]*)\n")
    assert.matches("^http://127%.0%.0%.1:%d+/rest/1/cmdcode/$", first)
    assert.matches("\noauth_endpoint http://127%.0%.0%.1:%d+/rest/\n", out)
    assert.matches("\ntoken_url http://127%.0%.0%.1:%d+/oauth/token/\n", out)
    assert.matches("\nclient_id %S+\n", out)
    assert.matches("\nhttps_webhook_url https://127%.0%.0%.1:%d+/rest/1/cmdcode/\n", out)
    assert.is_nil(out:find("client_secret", 1, true))   -- only with --show-secrets
    local ca_file = out:match("\nca_file (%S+)\n")
    local nginx_pid = tonumber(out:match("\npid (%d+)\n"))
    local prefix = ca_file:match("^(.*)/[^/]+$")

    assert.equal(200, (curl(quote(first .. "crm.lead.contact.items.get?id=1"))))

    os.execute("kill -TERM " .. sh_pid)
    assert.is_true(eventually(5, function() return dead(sh_pid) end), "b24-fake-portal ignored SIGTERM")
    assert.is_true(dead(nginx_pid), "nginx left running")
    assert.is_false(dir_exists(prefix), "prefix left behind")
  end)
end)
