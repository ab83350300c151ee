--- Starts and stops a fake Bitrix24 portal hosted in a real nginx (`ngx_lua`),
-- for specs and for bin/b24-fake-portal. Plain Lua 5.1-5.4/LuaJIT with
-- luasocket and cjson; processes are run through /bin/sh.
--
--     local fake = require "bitrix24.fake.server"
--     local portal = fake.start{ burst = 5 }      -- options: see M.start below
--     portal:fault{ method = "crm.lead.contact.add", kind = "html502" }
--     ... point the client at portal.webhook_url ...
--     portal:stop()
--
-- Fields of a started portal:
--     port, url ("http://127.0.0.1:PORT"), webhook_url (url .. "/rest/1/CODE/"),
--     oauth_endpoint (url .. "/rest/"), token_url (url .. "/oauth/token/"),
--     tls_port, https_url, https_webhook_url, ca_file (only with tls),
--     moved_url ("http://127.0.0.2:PORT", where redirect faults point by default),
--     code, user_id, client_id, client_secret, access_token, refresh_token, member_id,
--     pid (the nginx master), prefix (its temp directory).
-- Methods (each one HTTP request to `/_fake/...`; raise on a non-200 answer):
--     portal:requests(), portal:reset(opts), portal:fault(spec), portal:configure(t),
--     portal:expire_tokens(), portal:stats(), portal:info(), portal:leads(change),
--     portal:churn(rule), portal:events(), portal:fire(t), portal:install(t),
--     portal:uninstall(t) (see bitrix24.fake.events), and portal:stop().
-- reset{ leads = N } regenerates N leads (once), reset{ tokens = true } issues
-- new tokens; leads{ delete = {ids}, append = M } changes the leads at once;
-- `churn{ every = K, delete = {ids}, delete_count = D, append = M, times = T }`
-- changes them after every K-th crm.lead.list call, churn{ clear = true }
-- stops that, churn{} reports what churn did (see bitrix24.fake.churn).
-- The token fields are copies: reset() and info() refresh them.
--
-- Every nginx started here stops by itself: after `timeout` seconds (default
-- 900), and within a second after the process that started it is gone.
-- @module bitrix24.fake.server

local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"

local M = { _NAME = "bitrix24.fake.server", _VERSION = "0.2.0" }

local START_WAIT = 5       -- seconds to wait for nginx to answer before giving up
local STOP_WAIT = 3        -- seconds between SIGTERM and SIGKILL
local PORT_TRIES = 5       -- fresh port pairs to try when another process grabs ours
local CONTROL_TIMEOUT = 10 -- seconds for one control request

-- Where an ngx_lua build may keep its modules (Debian, Fedora/RHEL, source builds).
local MODULE_DIRS = { "/usr/lib/nginx/modules", "/usr/lib64/nginx/modules", "/usr/local/nginx/modules",
                      "/etc/nginx/modules" }
local NGINX_CANDIDATES = { "/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx",
                           "/usr/local/openresty/nginx/sbin/nginx" }
-- Where cjson.so for LuaJIT (Lua 5.1 ABI) may live; nginx's own defaults follow via ";;".
local CPATH_DIRS = { "/usr/lib/x86_64-linux-gnu/lua/5.1", "/usr/lib/aarch64-linux-gnu/lua/5.1",
                     "/usr/local/lib/lua/5.1", "/usr/lib/lua/5.1", "/usr/lib64/lua/5.1" }

---------------------------------------------------------------- small helpers

local function quote(s)
  return "'" .. tostring(s):gsub("'", [['\'']]) .. "'"
end

-- os.execute's result differs between 5.1 (a number) and 5.2+ (true|nil, ...).
local function run(cmd)
  local a, _, c = os.execute(cmd)
  if type(a) == "number" then return a == 0 end
  return a == true and (c == nil or c == 0)
end

local function capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("*a")
  p:close()
  return (out:gsub("%s+$", ""))
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function write_file(path, s)
  local f = assert(io.open(path, "wb"))
  assert(f:write(s))
  f:close()
end

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() end
  return f ~= nil
end

local function have_proc() return exists("/proc/self/stat") end

-- A zombie counts as dead: without an init that reaps orphans (plain
-- containers), a stopped nginx may stay a zombie forever.
local function alive(pid)
  if have_proc() then
    local stat = read_file("/proc/" .. pid .. "/stat")
    return stat ~= nil and stat:match("%)%s+(%S)") ~= "Z"
  end
  return run("kill -0 " .. pid .. " 2>/dev/null")
end

-- The pid of this Lua process (Linux only; nil elsewhere).
local function own_pid()
  local stat = read_file("/proc/self/stat")
  return stat and tonumber(stat:match("^(%d+)"))
end

local function abspath(path)
  if path:sub(1, 1) == "/" then return path end
  return capture("pwd") .. "/" .. path
end

-- The Lua tree this file was loaded from, so nginx finds the same modules
-- whether we run from the repo (lua/) or an installed share/lua/5.x/.
local function lua_root()
  local src = debug.getinfo(1, "S").source
  local file = assert(src:match("^@(.+)$"), "bitrix24.fake.server must be loaded from a file")
  local root = file:match("^(.*)[/\\]bitrix24[/\\]fake[/\\]server%.lua$") or "."
  return abspath(root)
end

local function find_nginx()
  local env = os.getenv("B24_FAKE_NGINX")
  if env and env ~= "" then return env end
  local found = capture("command -v nginx 2>/dev/null")
  if found ~= "" then return found end
  for _, p in ipairs(NGINX_CANDIDATES) do
    if exists(p) then return p end
  end
  error("nginx not found (set B24_FAKE_NGINX)", 0)
end

-- load_module lines for a dynamic ngx_lua; none when it is built in (OpenResty).
local function module_lines()
  for _, dir in ipairs(MODULE_DIRS) do
    if exists(dir .. "/ngx_http_lua_module.so") then
      local lines = {}
      -- ngx_lua needs the NDK module loaded first when it was built against it.
      if exists(dir .. "/ndk_http_module.so") then
        lines[#lines + 1] = "load_module " .. dir .. "/ndk_http_module.so;"
      end
      lines[#lines + 1] = "load_module " .. dir .. "/ngx_http_lua_module.so;"
      return table.concat(lines, "\n")
    end
  end
  return ""
end

local function lua_cpath()
  local parts = {}
  for _, dir in ipairs(CPATH_DIRS) do
    if exists(dir .. "/cjson.so") then parts[#parts + 1] = dir .. "/?.so" end
  end
  parts[#parts + 1] = ";"   -- with the separator before it: ";;" = nginx's default path
  return table.concat(parts, ";")
end

-- Redirect faults point by default to the same port on 127.0.0.2, a "moved
-- portal", so nginx listens there too. Linux routes all of 127/8 to lo;
-- where 127.0.0.2 cannot be bound we go without it.
local MOVED_HOST = "127.0.0.2"

local function can_bind(host, port)
  local s = socket.bind(host, port)
  if s then s:close() end
  return s ~= nil
end

-- A port that is free on 127.0.0.1 and, if `moved`, on 127.0.0.2 as well.
local function free_port(moved)
  for _ = 1, 20 do
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    port = tonumber(port)
    if not moved or can_bind(MOVED_HOST, port) then return port end
  end
  error("no port free on both 127.0.0.1 and " .. MOVED_HOST, 0)
end

-- Random bytes without reseeding the caller's math.random.
local function random_bytes(n)
  local f = io.open("/dev/urandom", "rb")
  local s = f and f:read(n)
  if f then f:close() end
  if s and #s == n then return s end
  local t = {}
  for i = 1, n do t[i] = string.char(math.random(0, 255)) end
  return table.concat(t)
end

local function random_code()
  local chars = "abcdefghijklmnopqrstuvwxyz0123456789"
  return (random_bytes(16):gsub(".", function(c)
    local k = c:byte() % #chars + 1
    return chars:sub(k, k)
  end))
end

---------------------------------------------------------------- TLS

local OPENSSL_CNF = [[
[req]
distinguished_name = dn
prompt = no
x509_extensions = ca
[dn]
CN = bitrix24 fake portal CA
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,IP:127.0.0.2,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
]]

-- A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it.
-- EC P-256 keys take milliseconds; our own openssl.cnf keeps the system one out.
local function make_certs(prefix)
  local cnf = prefix .. "/openssl.cnf"
  write_file(cnf, OPENSSL_CNF)
  local ec = " -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  local cmd = "cd " .. quote(prefix) .. " && (" .. table.concat({
    "openssl req -config openssl.cnf -x509" .. ec .. " -days 30 -keyout ca.key -out ca.pem",
    "openssl req -config openssl.cnf -new" .. ec .. " -subj /CN=127.0.0.1 -keyout server.key -out server.csr",
    "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -set_serial 0x" ..
      random_bytes(8):gsub(".", function(c) return ("%02x"):format(c:byte()) end) ..
      " -days 30 -extfile openssl.cnf -extensions server -out server.pem",
  }, " && ") .. ") >openssl.log 2>&1"
  if not run(cmd) then
    error("openssl failed: " .. (read_file(prefix .. "/openssl.log") or "?"), 0)
  end
  return prefix .. "/ca.pem"
end

---------------------------------------------------------------- nginx

local NGINX_CONF = [[
# Generated by bitrix24.fake.server. Everything lives under the prefix
# (paths are quoted: TMPDIR may hold spaces).
daemon off;
master_process on;
worker_processes 1;   # one Lua state = one portal
pid "${prefix}/nginx.pid";
error_log "${prefix}/error.log" warn;
${user}
${modules}

events { worker_connections 1024; }

http {
  access_log off;
  server_tokens off;
  client_body_temp_path "${prefix}/tmp/body";
  proxy_temp_path "${prefix}/tmp/proxy";
  fastcgi_temp_path "${prefix}/tmp/fastcgi";
  uwsgi_temp_path "${prefix}/tmp/uwsgi";
  scgi_temp_path "${prefix}/tmp/scgi";
  client_max_body_size 64m;
  client_body_buffer_size 16m;   # bodies stay in memory (a file fallback exists)
  keepalive_requests 100000;
  keepalive_timeout 60s;
  lua_socket_log_errors off;
  lua_package_path "${lua_path}";
  lua_package_cpath "${lua_cpath}";

  init_by_lua_block { require("bitrix24.fake.nginx").init("${prefix}/portal.json") }
  init_worker_by_lua_block { require("bitrix24.fake.nginx").init_worker() }

  server {
${listen}
    location / {
      content_by_lua_block { require("bitrix24.fake.nginx").handle() }
    }
  }
}
]]

-- The listen (and TLS) lines of the server block.
local function listen_lines(hosts, port, tls_port, prefix)
  local lines = {}
  for _, host in ipairs(hosts) do
    lines[#lines + 1] = "listen " .. host .. ":" .. port .. ";"
    if tls_port then lines[#lines + 1] = "listen " .. host .. ":" .. tls_port .. " ssl;" end
  end
  if tls_port then
    lines[#lines + 1] = 'ssl_certificate "' .. prefix .. '/server.pem";'
    lines[#lines + 1] = 'ssl_certificate_key "' .. prefix .. '/server.key";'
  end
  return "    " .. table.concat(lines, "\n    ")
end

local function expand(template, vars)
  return (template:gsub("%${([%w_]+)}", function(k) return tostring(assert(vars[k], k)) end))
end

local function is_root()
  return capture("id -u 2>/dev/null") == "0"
end

-- Starts nginx in the background; returns the launcher's pid (the watchdog's
-- `timeout`, or nginx itself when there is no timeout).
local function launch(nginx, prefix, timeout)
  local cmd = quote(nginx) .. " -p " .. quote(prefix .. "/") .. " -c " .. quote(prefix .. "/nginx.conf") ..
              " -e " .. quote(prefix .. "/error.log")
  -- The in-nginx timer stops it at `timeout`; GNU timeout is a hard backstop
  -- in case the worker is wedged, so it fires a little later.
  if timeout and run("command -v timeout >/dev/null 2>&1") then
    cmd = "timeout -s TERM -k " .. STOP_WAIT .. " " .. math.ceil(timeout + 5) .. " " .. cmd
  end
  return tonumber(capture(cmd .. " </dev/null >>" .. quote(prefix .. "/stderr.log") .. " 2>&1 & echo $!"))
end

local function kill(pid, sig)
  run("kill -" .. sig .. " " .. pid .. " 2>/dev/null")
end

-- SIGTERM (fast shutdown), wait, then SIGKILL the master and its workers.
local function terminate(pid)
  if not pid or not alive(pid) then return end
  kill(pid, "TERM")
  local deadline = socket.gettime() + STOP_WAIT
  while alive(pid) and socket.gettime() < deadline do socket.sleep(0.01) end
  if alive(pid) then
    run("pkill -KILL -P " .. pid .. " 2>/dev/null")
    kill(pid, "KILL")
  end
end

-- One HTTP request to the portal; returns status, body.
local function request(url, method, body)
  local chunks = {}
  local headers = { ["content-length"] = body and #body or 0 }
  if body then headers["content-type"] = "application/json" end
  local ok, status = http.request{
    url = url, method = method, headers = headers,
    source = body and ltn12.source.string(body) or nil,
    sink = ltn12.sink.table(chunks),
    create = function()
      local s = socket.tcp()
      s:settimeout(CONTROL_TIMEOUT)
      return s
    end,
  }
  if not ok then return nil, status end
  return status, table.concat(chunks)
end

-- Waits until nginx answers /_fake/info with our code. Returns the info table,
-- or nil, reason, retryable.
local function wait_ready(portal, launcher)
  local deadline = socket.gettime() + START_WAIT
  local url = "http://127.0.0.1:" .. portal.port .. "/_fake/info"
  while socket.gettime() < deadline do
    -- The pid file is written after nginx has bound its ports.
    if exists(portal.prefix .. "/nginx.pid") then
      local status, body = request(url, "GET")
      if status == 200 then
        local info = cjson.decode(body)
        if info.code == portal.code then return info end
        return nil, "another server answers on port " .. portal.port, true
      end
    end
    -- nginx logs to stderr until it has opened error.log.
    local log = read_file(portal.prefix .. "/error.log") or ""
    if log == "" then log = read_file(portal.prefix .. "/stderr.log") or "" end
    if log:find("[emerg]", 1, true) or not alive(launcher) then
      return nil, log, log:find("Address already in use", 1, true) ~= nil
    end
    socket.sleep(0.005)
  end
  return nil, "nginx did not answer within " .. START_WAIT .. " s"
end

---------------------------------------------------------------- the portal object

local Portal = {}
Portal.__index = Portal

local function control(self, method, path, payload)
  if self.stopped then error("bitrix24.fake.server: portal is stopped", 3) end
  local status, body = request(self.url .. path, method, payload and cjson.encode(payload) or nil)
  if status ~= 200 then
    error(("bitrix24.fake.server: %s %s: %s %s"):format(method, path, tostring(status), tostring(body)), 3)
  end
  return cjson.decode(body)
end

-- Copies the credentials from /_fake/info onto the object.
local function apply_info(self, info)
  self.code = info.code
  -- cjson on Lua 5.3+ decodes every number as a float.
  self.user_id = math.tointeger and math.tointeger(info.user_id) or info.user_id
  self.client_id = info.client_id
  self.client_secret = info.client_secret
  self.access_token = info.access_token
  self.refresh_token = info.refresh_token
  self.member_id = info.member_id
  self.webhook_url = self.url .. info.webhook_path
  if self.https_url then self.https_webhook_url = self.https_url .. info.webhook_path end
end

--- A started portal (what `start` returns); its fields are listed in the
-- module's description. Each method below is one HTTP request to the
-- portal's `/_fake/` endpoints and raises when it does not answer 200.
-- @type Portal

--- The portal's credentials (`code`, `user_id`, `client_id`,
-- `client_secret`, `access_token`, `refresh_token`, `member_id`,
-- `webhook_path`), also copied onto the object.
-- @treturn table
function Portal:info()
  local info = control(self, "GET", "/_fake/info")
  apply_info(self, info)
  return info
end

--- Every REST and token request since the last reset, oldest first: `method`,
-- `http_method`, `auth` ("webhook", "oauth", "none"), `params`, `conn`,
-- `user_agent`, `status`, `error`; a batch also lists its `calls`.
-- @treturn {table,...}
function Portal:requests() return control(self, "GET", "/_fake/requests") end
--- Counters of what the portal served.
-- @treturn table
function Portal:stats() return control(self, "GET", "/_fake/stats") end
--- Injects a fault for a method (or `pattern`, a Lua pattern): kind is
-- latency, html502, truncate, malformed, reset, error500, error200,
-- redirect or canned; `times`, `delay`, `status`, `body`, `location` refine
-- it; `{ clear = true }` removes every fault.
-- @tparam table spec
-- @treturn table `{ ok = true, faults = n }`
function Portal:fault(spec) return control(self, "POST", "/_fake/fault", spec) end
--- Changes limits and costs live: `rate`, `burst`, `op_limit`, `token_ttl`,
-- `op_cost`, `latency`, `call_cost`, `count_cost_per_1000_rows`.
-- @tparam table t
-- @treturn table the configuration now
function Portal:configure(t) return control(self, "POST", "/_fake/config", t) end
--- The current access token answers `401 expired_token` from now on.
-- @treturn table `{ ok = true }`
function Portal:expire_tokens() return control(self, "POST", "/_fake/expire_tokens", {}) end
--- Deletes and appends leads at once: `{ delete = {ids}, append = m }`.
-- @tparam[opt] table change
-- @treturn table what was deleted and appended, and where the leads stand
function Portal:leads(change) return control(self, "POST", "/_fake/leads", change or {}) end
--- Changes the leads after every k-th crm.lead.list call:
-- `{ every = k, delete = {ids}, delete_count = d, append = m, times = t }`;
-- `{ clear = true }` stops it; `{}` only reports.
-- @tparam[opt] table rule
-- @treturn table what churn did so far
function Portal:churn(rule) return control(self, "POST", "/_fake/churn", rule or {}) end

--- Events (bitrix24.fake.events): the portal's `application_token`, its
-- event bindings, the `deliveries` (each POST of an event: `url`, `event`,
-- `status` the handler answered, or `error`) and the offline `queue`.
-- @treturn table
function Portal:events() return control(self, "GET", "/_fake/events") end

--- Fires an event to its bindings (online ones get a form POST, offline
-- ones a queue record), or to `url` only: `{ event =, data =, url =, auth = }`,
-- `auth` overriding fields of the event's auth block.
-- @tparam table t
-- @treturn table what was fired
function Portal:fire(t) return control(self, "POST", "/_fake/fire", t) end

--- POSTs ONAPPINSTALL, with the tokens and the application token, to
-- `t.url`; `t.auth` overrides fields of its auth block.
-- @tparam table t
-- @treturn table
function Portal:install(t) return control(self, "POST", "/_fake/install", t) end

--- POSTs ONAPPUNINSTALL (no tokens) to `t.url`; the app's bindings and
-- queue go.
-- @tparam table t `url`, and `clean`
-- @treturn table
function Portal:uninstall(t) return control(self, "POST", "/_fake/uninstall", t) end

--- Back to the initial data: empty log, no faults, no churn, the initial
-- limits and costs. `{ tokens = true }` also issues new tokens,
-- `{ leads = n }` generates n leads. Refreshes the token fields of the
-- object (a reset may issue new tokens).
-- @tparam[opt] table opts
-- @treturn table `{ ok = true }`
function Portal:reset(opts)
  local res = control(self, "POST", "/_fake/reset", opts or {})
  self:info()
  return res
end

--- Stops nginx and removes its temporary directory; a second call does
-- nothing.
function Portal:stop()
  if self.stopped then return end
  self.stopped = true
  terminate(self.pid)
  terminate(self.launcher)
  run("rm -rf " .. quote(self.prefix))
end

---------------------------------------------------------------- start

local PORTAL_OPTIONS = { "rate", "burst", "op_limit", "op_cost", "op_bucket", "token_ttl", "code", "user_id",
                         "client_id", "client_secret", "https_only", "leads", "latency", "call_cost",
                         "count_cost_per_1000_rows" }

--- Starting a portal.
-- @section start

--- Starts a portal on free ports and waits until it answers.
-- Options (all optional):
--
-- * `rate`, `burst`, `op_limit`, `op_cost`, `op_bucket`, `token_ttl`, `code`,
--   `user_id`, `client_id`, `client_secret`: passed to the portal logic;
-- * `data`: path of a JSON data file; `leads`: generate this many leads
--   instead of the data set's (ids ascending with gaps, the same for the
--   same count);
-- * `latency`: seconds every REST answer waits; `call_cost`: seconds every
--   method call takes (each sub-call of a batch too);
--   `count_cost_per_1000_rows`: seconds a counted list call (start >= 0)
--   takes per 1000 rows of its table. These three are real waits and count
--   as processing and operating time (bitrix24.fake.portal); all default to 0;
-- * `tls` (default true): also listen with HTTPS; `https_only`: REST calls
--   over plain http get 400 INVALID_REQUEST "Https required." as on a real
--   portal (needs tls; /\_fake/ stays on http);
-- * `port`, `tls_port`: fixed ports (default: free ones); `timeout`: seconds
--   before nginx stops by itself (default 900; false = never); `owner_pid`:
--   nginx stops soon after this process is gone (default: the calling Lua
--   process; false = no watch);
-- * `lua_path`: extra nginx `lua_package_path` entries, searched first
--   (default `$B24_FAKE_LUA_PATH`), e.g. to run a patched portal module.
-- @tparam[opt] table opts
-- @treturn Portal the started portal
-- @raise when nginx with the Lua module is missing or does not start
function M.start(opts)
  opts = opts or {}
  local tls = opts.tls ~= false
  if opts.https_only and not tls then
    error("bitrix24.fake.server: https_only needs tls (nothing could be called otherwise)", 2)
  end
  local timeout = opts.timeout
  if timeout == nil then timeout = 900 end
  if timeout == 0 then timeout = false end

  local prefix = capture("mktemp -d \"${TMPDIR:-/tmp}/b24-fake-portal.XXXXXXXX\"")
  assert(prefix ~= "" and exists(prefix .. "/."), "bitrix24.fake.server: mktemp -d failed")
  local portal = setmetatable({ prefix = prefix }, Portal)
  local ok, err = pcall(function()
    run("mkdir -p " .. quote(prefix .. "/tmp"))

    local conf = {}
    for _, k in ipairs(PORTAL_OPTIONS) do conf[k] = opts[k] end
    conf.code = conf.code or random_code()
    if opts.data then
      conf.data = abspath(opts.data)
      if not exists(conf.data) then error("no such data file: " .. conf.data, 0) end
    end
    portal.code = conf.code
    local owner = opts.owner_pid
    if owner == nil then owner = own_pid() end
    write_file(prefix .. "/portal.json", cjson.encode{
      portal = conf, owner_pid = owner or nil, prefix = prefix, timeout = timeout or nil,
    })

    if tls then portal.ca_file = make_certs(prefix) end

    local root = lua_root()
    local extra = opts.lua_path or os.getenv("B24_FAKE_LUA_PATH")
    local vars = {
      prefix = prefix,
      user = is_root() and "user root;   # workers would otherwise run as nobody" or "",
      modules = module_lines(),
      lua_path = (extra and extra ~= "" and extra .. ";" or "") ..
                 root .. "/?.lua;" .. root .. "/?/init.lua;;",
      lua_cpath = lua_cpath(),
    }
    local nginx = find_nginx()
    local moved = can_bind(MOVED_HOST, 0)
    local hosts = moved and { "127.0.0.1", MOVED_HOST } or { "127.0.0.1" }
    local fixed = opts.port and opts.port ~= 0
    local tries = fixed and 1 or PORT_TRIES
    for attempt = 1, tries do
      portal.port = fixed and opts.port or free_port(moved)
      local tls_port = tls and ((opts.tls_port and opts.tls_port ~= 0) and opts.tls_port or free_port(moved))
      vars.listen = listen_lines(hosts, portal.port, tls_port, prefix)
      write_file(prefix .. "/nginx.conf", expand(NGINX_CONF, vars))
      write_file(prefix .. "/error.log", "")
      write_file(prefix .. "/stderr.log", "")
      portal.launcher = launch(nginx, prefix, timeout)
      local info, why, retry = wait_ready(portal, portal.launcher)
      if info then
        portal.url = "http://127.0.0.1:" .. portal.port
        portal.oauth_endpoint = portal.url .. "/rest/"
        portal.token_url = portal.url .. "/oauth/token/"
        if moved then portal.moved_url = "http://" .. MOVED_HOST .. ":" .. portal.port end
        if tls then
          portal.tls_port = tls_port
          portal.https_url = "https://127.0.0.1:" .. tls_port
        end
        apply_info(portal, info)
        portal.pid = tonumber(read_file(prefix .. "/nginx.pid"))
        return
      end
      terminate(portal.launcher)
      if not retry or attempt == tries then
        error("nginx failed to start: " .. tostring(why), 0)
      end
    end
  end)
  if not ok then
    terminate(portal.launcher)
    run("rm -rf " .. quote(prefix))
    error("bitrix24.fake.server: " .. tostring(err), 2)
  end
  return portal
end

return M
