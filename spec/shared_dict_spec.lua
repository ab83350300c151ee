-- The nginx shared-dict budget and token store holding corrupt or hostile
-- content, inside a real nginx (its own LuaJIT, so under Lua 5.4's run
-- only, like spec/nginx_spec.lua): a BUDGET_ERROR or STORE_ERROR returned,
-- never a raise, the dict's lock always given back.

local support = require "support"
local socket = require "socket"
local http = require "socket.http"
local cjson = require "cjson"

local function quote(s) return "'" .. tostring(s):gsub("'", [['\'']]) .. "'" end

local function module_lines()
  for _, dir in ipairs { "/usr/lib/nginx/modules", "/usr/lib64/nginx/modules" } do
    local f = io.open(dir .. "/ngx_http_lua_module.so", "rb")
    if f then
      f:close()
      local ndk = io.open(dir .. "/ndk_http_module.so", "rb")
      local lines = ""
      if ndk then ndk:close(); lines = "load_module " .. dir .. "/ndk_http_module.so;\n" end
      return lines .. "load_module " .. dir .. "/ngx_http_lua_module.so;\n"
    end
  end
  return ""
end

local function urlencode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

describe("shared-dict budget and token store under corrupt content", function()
  if support.LUA_VERSION ~= "5.4" then
    pending("runs under Lua 5.4 only (the nginx runs its own LuaJIT)")
    return
  end

  local portal, prefix, base, launcher

  setup(function()
    local ROOT = (support.run("cd " .. quote(support.ROOT) .. " && pwd"):gsub("%s+$", ""))
    local _, err, status = support.run("make -s -C " .. quote(ROOT) .. " LUA_VERSION=luajit build")
    assert(status == 0, "building the LuaJIT core failed: " .. err)
    portal = support.start_portal { tls = false, rate = 1000, burst = 100000 }
    prefix = (support.run('mktemp -d "${TMPDIR:-/tmp}/b24-dict-spec.XXXXXXXX"'):gsub("%s+$", ""))
    os.execute("mkdir -p " .. quote(prefix .. "/tmp"))
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    base = "http://127.0.0.1:" .. port
    local conf = table.concat({
      "daemon off;", "master_process on;", "worker_processes 1;",
      'pid "' .. prefix .. '/nginx.pid";', 'error_log "' .. prefix .. '/error.log" warn;',
      support.run("id -u") == "0\n" and "user root;" or "", module_lines(),
      "events { worker_connections 64; }",
      "http {",
      '  client_body_temp_path "' .. prefix .. '/tmp/body"; proxy_temp_path "' .. prefix .. '/tmp/proxy";',
      '  fastcgi_temp_path "' .. prefix .. '/tmp/fcgi"; uwsgi_temp_path "' .. prefix .. '/tmp/uwsgi";',
      '  scgi_temp_path "' .. prefix .. '/tmp/scgi"; access_log off;',
      '  lua_package_path "' .. ROOT .. '/lua/?.lua;;";',
      '  lua_package_cpath "' .. ROOT .. '/build/luajit/?.so;;";',
      "  lua_shared_dict bitrix24 1m;",
      "  server {",
      "    listen 127.0.0.1:" .. port .. ";",
      '    location /t/ { content_by_lua_file "' .. ROOT .. '/spec/nginx/faults.lua"; }',
      "  }",
      "}",
    }, "\n")
    local f = assert(io.open(prefix .. "/nginx.conf", "wb"))
    f:write(conf)
    f:close()
    launcher = tonumber((support.run("timeout -s TERM -k 3 120 nginx -p " .. quote(prefix .. "/") .. " -c "
      .. quote(prefix .. "/nginx.conf") .. " -e " .. quote(prefix .. "/error.log")
      .. " </dev/null >/dev/null 2>&1 & echo $!")))
    local deadline = socket.gettime() + 5
    while not http.request(base .. "/") do
      if socket.gettime() > deadline then
        local f = io.open(prefix .. "/error.log", "rb")
        error("nginx did not start: " .. (f and f:read("*a") or ""))
      end
      socket.sleep(0.02)
    end
  end)

  teardown(function()
    if launcher then os.execute("kill " .. launcher .. " 2>/dev/null") end
    if prefix then
      local f = io.open(prefix .. "/nginx.pid", "rb")
      if f then
        local pid = f:read("*a"):match("%d+")
        f:close()
        if pid then os.execute("kill -QUIT " .. pid .. " 2>/dev/null") end
      end
      socket.sleep(0.2)
      os.execute("rm -rf " .. quote(prefix))
    end
    if portal then portal:stop() end
  end)

  local function get(path, params)
    local q = {}
    for k, v in pairs(params) do q[#q + 1] = k .. "=" .. urlencode(v) end
    local body, status = http.request(base .. path .. "?" .. table.concat(q, "&"))
    assert.equal(200, status, tostring(body) .. support.read_file(prefix .. "/error.log"))
    return cjson.decode(body)
  end

  -- What the dict held, and whether the first call must fail (nil: succeed).
  local BUDGETS = {
    { "an infinite level", '{"level":1e999}', "BUDGET_ERROR" },
    { "not JSON", '{"level": 3', "BUDGET_ERROR" },
    { "a JSON array", "[1,2]", nil },
    { "a number instead of JSON text", nil, "BUDGET_ERROR" },
    { "a string for the level", '{"level":"abc","last":"x"}', nil },
  }
  for _, case in ipairs(BUDGETS) do
    it("budget holding " .. case[1] .. ": no raise, lock given back, the next call works", function()
      local r = get("/t/budget", { webhook = portal.webhook_url, raw = case[2] })
      assert.is_nil(r.first.raised, r.first.raised)
      if case[3] then
        assert.equal(case[3], r.first.code)
        assert.equal("client", r.first.kind)
      else
        assert.is_true(r.first.ok, r.first.description)
      end
      assert.is_true(r.lock_free)
      assert.is_true(r.second.ok, r.second.description or r.second.raised)
    end)
  end

  local STORES = {
    { "not JSON", '{"access_token": "abc' },
    { "a number for the access token", '{"access_token": 5}' },
    { "an infinite number", '{"access_token": 1e999}' },
    { "a number instead of JSON text", nil },
  }
  for _, case in ipairs(STORES) do
    it("token store holding " .. case[1] .. ": STORE_ERROR, left alone, lock given back", function()
      portal:reset { tokens = true }
      local info = portal:info()
      portal:expire_tokens()
      local r = get("/t/store", { raw = case[2], endpoint = portal.oauth_endpoint, token_url = portal.token_url,
        access_token = info.access_token, refresh_token = info.refresh_token, client_id = info.client_id,
        client_secret = info.client_secret })
      assert.is_nil(r.first.raised, r.first.raised)
      assert.equal("STORE_ERROR", r.first.code)
      assert.equal("client", r.first.kind)
      assert.is_true(r.lock_free)
      assert.is_true(r.left_alone)
      -- Once it is removed, the refresh goes through and is saved.
      assert.is_true(r.second.ok, r.second.description or r.second.raised)
      assert.equal(portal:info().refresh_token, r.saved_refresh)
    end)
  end
end)
