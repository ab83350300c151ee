-- Helpers shared by bench/run.lua and bench/worker.lua: paths, shell,
-- /proc readings, and the bench's own nginx (canned answers, paging, and
-- the two nginx locations of row 5).
--
-- The nginx runs as the current user under a temporary prefix and stops by
-- itself: at `lifetime` seconds (a timer in the worker, and GNU timeout as
-- a backstop) and within a second after the process that started it exits.

local L = {}

L.ROOT = (arg and arg[0] or ""):match("^(.*)/bench/[^/]+$") or "."

function L.quote(s) return "'" .. tostring(s):gsub("'", [['\'']]) .. "'" end

function L.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

function L.write_file(path, s)
  local f = assert(io.open(path, "wb"))
  assert(f:write(s))
  f:close()
end

function L.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- Output of a shell command (stdout and stderr), and whether it succeeded.
function L.sh(cmd)
  local p = assert(io.popen("(" .. cmd .. ") 2>&1", "r"))
  local out = p:read("*a")
  local ok, _, code = p:close()
  if type(ok) == "number" then ok = ok == 0 end   -- Lua 5.1
  return out, ok and (code == nil or code == 0)
end

function L.capture(cmd)
  return (L.sh(cmd):gsub("%s+$", ""))
end

-- VmRSS / VmHWM of this process, in KiB.
function L.status_kib(field)
  local s = L.read_file("/proc/self/status") or ""
  return tonumber(s:match(field .. ":%s*(%d+)"))
end

-- Resets VmHWM to the current RSS (Linux >= 4.0), so a later VmHWM is the
-- peak of what follows. Returns false where it is not supported.
function L.reset_peak()
  local f = io.open("/proc/self/clear_refs", "w")
  if not f then return false end
  local ok = f:write("5")
  f:close()
  return ok and true or false
end

-- The share of the whole machine's CPU time (0..1) that was busy over
-- `interval` seconds, from /proc/stat. Between rounds the bench itself is
-- idle, so this is the other tenants' load.
function L.busy(interval)
  local socket = require "socket"
  local function sample()
    local line = (L.read_file("/proc/stat") or ""):match("^cpu%s+([^\n]+)")
    if not line then return nil end
    local total, idle, i = 0, 0, 0
    for n in line:gmatch("%d+") do
      i = i + 1
      if i <= 8 then   -- user nice system idle iowait irq softirq steal
        total = total + tonumber(n)
        if i == 4 or i == 5 then idle = idle + tonumber(n) end
      end
    end
    return total, idle
  end
  local t0, i0 = sample()
  socket.sleep(interval)
  local t1, i1 = sample()
  if not t0 or not t1 or t1 == t0 then return 0 end
  return 1 - (i1 - i0) / (t1 - t0)
end

-- Waits (at most max_wait seconds) until the machine is quieter than
-- `threshold`; returns the last busy share seen.
function L.wait_quiet(threshold, max_wait)
  local socket = require "socket"
  local deadline = socket.gettime() + max_wait
  local b
  repeat
    b = L.busy(0.25)
  until b < threshold or socket.gettime() > deadline
  return b
end

function L.own_pid()
  local stat = L.read_file("/proc/self/stat")
  return stat and tonumber(stat:match("^(%d+)"))
end

function L.median(t)
  local c = {}
  for i, v in ipairs(t) do c[i] = v end
  table.sort(c)
  local n = #c
  if n == 0 then return nil end
  if n % 2 == 1 then return c[(n + 1) / 2] end
  return (c[n / 2] + c[n / 2 + 1]) / 2
end

function L.free_port()
  local socket = require "socket"
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- The canned answer of row 1: lead 1's contacts, the docs' example
-- envelope (integers, floats, strings, a nested time block).
L.SMALL_BODY = '{"result":[{"CONTACT_ID":1010,"SORT":10,"ROLE_ID":0,"IS_PRIMARY":"Y"},'
  .. '{"CONTACT_ID":1011,"SORT":20,"ROLE_ID":0,"IS_PRIMARY":"N"}],'
  .. '"time":{"start":1715091541.642592,"finish":1715091541.722384,"duration":0.07979202270507812,'
  .. '"processing":0.011207103729248047,"date_start":"2024-05-07T17:19:01+03:00",'
  .. '"date_finish":"2024-05-07T17:19:01+03:00","operating_reset_at":1715092141,"operating":0}}'

-- A large answer: `rows` bindings in the shape of crm.lead.contact.items.get.
function L.big_body(rows)
  local parts = {}
  for i = 1, rows do
    parts[i] = string.format('{"CONTACT_ID":%d,"SORT":%d,"ROLE_ID":%d,"IS_PRIMARY":"%s"}',
      100000 + i, i * 10, i % 3, i == 1 and "Y" or "N")
  end
  return '{"result":[' .. table.concat(parts, ",") .. '],"total":' .. rows
    .. ',"time":{"start":1715091541.642592,"finish":1715091541.722384,"duration":0.07979202270507812,'
    .. '"processing":0.011207103729248047,"date_start":"2024-05-07T17:19:01+03:00",'
    .. '"date_finish":"2024-05-07T17:19:01+03:00","operating_reset_at":1715092141,"operating":0}}'
end

L.REQUEST_BODY = '{"id":1}'

---------------------------------------------------------------- nginx

local function module_lines()
  for _, dir in ipairs { "/usr/lib/nginx/modules", "/usr/lib64/nginx/modules", "/usr/local/nginx/modules" } do
    if L.exists(dir .. "/ngx_http_lua_module.so") then
      local lines = ""
      if L.exists(dir .. "/ndk_http_module.so") then lines = "load_module " .. dir .. "/ndk_http_module.so;\n" end
      return lines .. "load_module " .. dir .. "/ngx_http_lua_module.so;\n"
    end
  end
  return ""   -- built in (OpenResty)
end

-- Where Debian keeps cjson.so for LuaJIT (the 5.1 ABI).
local function cjson_cpath()
  for _, dir in ipairs { "/usr/lib/x86_64-linux-gnu/lua/5.1", "/usr/lib/aarch64-linux-gnu/lua/5.1",
                         "/usr/local/lib/lua/5.1", "/usr/lib/lua/5.1" } do
    if L.exists(dir .. "/cjson.so") then return dir .. "/?.so;" end
  end
  return ""
end

-- worker_processes 1: row 1 measures ONE keep-alive connection, which one
-- worker serves whatever their number; on this 2-core machine one core is
-- left to the client under test, so server and client do not fight over a
-- CPU. A second worker would only idle, or compete with the client for the
-- second core on the contenders that open a connection per call.
local CONF = [[
daemon off;
master_process on;
worker_processes 1;
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
  keepalive_requests 10000000;
  keepalive_timeout 60s;
  client_body_buffer_size 1m;
  lua_socket_log_errors off;
  lua_package_path "${root}/lua/?.lua;;";
  lua_package_cpath "${root}/build/luajit/?.so;${cjson_cpath};";

  init_by_lua_block {
    local f = assert(io.open("${prefix}/big.json", "rb"))
    BIG = f:read("*a")
    f:close()
    PORTAL_URL = "${portal_url}"
    SLOW_URL = "${slow_url}"
  }

  # Stops nginx when the bench process is gone or the lifetime is over.
  init_worker_by_lua_block {
    local owner, deadline = ${owner}, ngx.now() + ${lifetime}
    ngx.timer.every(1, function()
      local f = io.open("/proc/" .. owner .. "/stat", "rb")
      local alive = false
      if f then alive = f:read("*a"):match("%)%s+(%S)") ~= "Z"; f:close() end
      ngx.update_time()
      if not alive or ngx.now() > deadline then
        local p = io.open("${prefix}/nginx.pid", "rb")
        local master = p and tonumber(p:read("*a"))
        if p then p:close() end
        if master then os.execute("kill -TERM " .. master) end
      end
    end)
  }

  upstream portal {
    server 127.0.0.1:${portal_port};
    keepalive 16;
  }

  server {
    listen 127.0.0.1:${port};
    default_type application/json;

    # Row 1: a canned crm.lead.contact.items.get answer, no Lua involved.
    location = /rest/1/bench/crm.lead.contact.items.get {
      return 200 '${small}';
    }

    # Row 2: a large answer, kept in memory.
    location = /rest/1/big/crm.lead.contact.items.get {
      content_by_lua_block { ngx.print(BIG) }
    }

    # Row 4: crm.lead.list over N rows (the N is in the webhook code,
    # /rest/1/pN/), 50 a page, following start/next like Bitrix24.
    location ~ ^/rest/1/p(\d+)/crm\.lead\.list$ {
      set $total $1;
      content_by_lua_block {
        ngx.req.read_body()
        local body = ngx.req.get_body_data() or ""
        local start = tonumber(body:match('"start":%s*"?(%-?%d+)')) or 0
        if start < 0 then start = 0 end
        local total = tonumber(ngx.var.total)
        local rows = {}
        for i = start + 1, math.min(start + 50, total) do
          rows[#rows + 1] = string.format('{"ID":"%d","TITLE":"Lead %d","NAME":"Name %d","LAST_NAME":"Last %d",'
            .. '"STATUS_ID":"NEW","OPPORTUNITY":"%d.00","CURRENCY_ID":"USD","ASSIGNED_BY_ID":"1"}',
            i, i, i, i, i % 1000)
        end
        local nxt = start + 50 < total and (',"next":' .. (start + 50)) or ""
        ngx.print('{"result":[', table.concat(rows, ","), ']', nxt, ',"total":', total,
          ',"time":{"start":1715091541.6,"finish":1715091541.7,"duration":0.1,"processing":0.01,'
          .. '"operating_reset_at":1715092141,"operating":0}}')
      }
    }

    # Row 5: the fake portal through the client (cosockets) ...
    location = /via-client {
      content_by_lua_block {
        local bitrix24 = require "bitrix24"
        local client = bitrix24.webhook(PORTAL_URL, { rate_limit = false })
        local rows, err = client:call("crm.lead.contact.items.get", { id = 1 })
        if not rows then
          ngx.log(ngx.ERR, tostring(err))
          return ngx.exit(ngx.HTTP_BAD_GATEWAY)
        end
        ngx.header.content_type = "application/json"
        ngx.say(require("cjson").encode(rows))
      }
    }

    # Row 6c: one request fans out ?n= calls to the slow portal with
    # ?parallel= in flight, through the client's own fan-out form when it
    # has one (client:calls), else one call after another. Answers how many
    # succeeded and the seconds the handler took.
    location = /fanout {
      content_by_lua_block {
        local bitrix24 = require "bitrix24"
        local n, parallel = tonumber(ngx.var.arg_n), tonumber(ngx.var.arg_parallel)
        local client = bitrix24.webhook(SLOW_URL, { rate_limit = false })
        local list = {}
        for i = 1, n do list[i] = { "crm.lead.contact.items.get", { id = 1 } } end
        ngx.update_time()
        local t0, ok, form = ngx.now(), 0, "sequential"
        local fan = rawget(getmetatable(client), "calls")
        if type(fan) == "function" then
          form = "client:calls"
          local results = fan(client, list, { parallel = parallel })
          for i = 1, n do
            local r = results and results[i]
            if type(r) == "table" and r[1] ~= nil then ok = ok + 1 end
          end
        else
          for i = 1, n do
            if client:call(list[i][1], list[i][2]) then ok = ok + 1 end
          end
        end
        ngx.update_time()
        ngx.say(string.format('{"calls":%d,"ok":%d,"seconds":%.4f,"form":"%s"}', n, ok, ngx.now() - t0, form))
      }
    }

    # Row 6c's probe: answered by the same (only) worker, so it is slow
    # whenever that worker is blocked.
    location = /probe {
      content_by_lua_block { ngx.say("ok") }
    }

    # ... and the same request with plain proxy_pass (upstream keep-alive,
    # as the client's cosocket pool keeps its connections).
    location = /via-proxy {
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_method POST;
      proxy_set_header Content-Type application/json;
      proxy_set_header Accept application/json;
      proxy_set_body '{"id":1}';
      proxy_pass http://portal${portal_path}crm.lead.contact.items.get;
    }
  }
}
]]

local function expand(template, vars)
  return (template:gsub("%${([%w_]+)}", function(k) return tostring(assert(vars[k], k)) end))
end

local function alive(pid)
  local stat = L.read_file("/proc/" .. pid .. "/stat")
  return stat ~= nil and stat:match("%)%s+(%S)") ~= "Z"
end

local Nginx = {}
Nginx.__index = Nginx

function Nginx:stop()
  if self.stopped then return end
  self.stopped = true
  local pid = tonumber(L.read_file(self.prefix .. "/nginx.pid") or "")
  if pid then os.execute("kill -TERM " .. pid .. " 2>/dev/null") end
  local socket = require "socket"
  local deadline = socket.gettime() + 3
  while self.launcher and alive(self.launcher) and socket.gettime() < deadline do socket.sleep(0.02) end
  if self.launcher and alive(self.launcher) then os.execute("kill -KILL " .. self.launcher .. " 2>/dev/null") end
  os.execute("rm -rf " .. L.quote(self.prefix))
end

-- opts: big (the row-2 body), portal (a started fake portal, for row 5),
-- slow_portal (one with a latency, for row 6c), lifetime (seconds). Returns an object with url, port, stop().
function L.start_nginx(opts)
  local socket = require "socket"
  local prefix = L.capture('mktemp -d "${TMPDIR:-/tmp}/b24-bench.XXXXXXXX"')
  assert(prefix ~= "" and L.exists(prefix .. "/."), "mktemp -d failed")
  os.execute("mkdir -p " .. L.quote(prefix .. "/tmp"))
  L.write_file(prefix .. "/big.json", opts.big)
  local root = L.capture("cd " .. L.quote(L.ROOT) .. " && pwd")
  local port = L.free_port()
  local portal_path = opts.portal.webhook_url:match("^https?://[^/]+(/.*)$")
  local conf = expand(CONF, {
    prefix = prefix, root = root, port = port, owner = L.own_pid() or 1,
    lifetime = opts.lifetime or 900,
    user = L.capture("id -u") == "0" and "user root;" or "",
    modules = module_lines(), cjson_cpath = cjson_cpath(),
    small = L.SMALL_BODY, portal_url = opts.portal.webhook_url, slow_url = opts.slow_portal.webhook_url,
    portal_port = opts.portal.port, portal_path = portal_path,
  })
  L.write_file(prefix .. "/nginx.conf", conf)
  L.write_file(prefix .. "/error.log", "")
  local self = setmetatable({ prefix = prefix, port = port, url = "http://127.0.0.1:" .. port }, Nginx)
  self.launcher = tonumber(L.capture("timeout -s TERM -k 3 " .. math.ceil((opts.lifetime or 900) + 5)
    .. " nginx -p " .. L.quote(prefix .. "/") .. " -c " .. L.quote(prefix .. "/nginx.conf")
    .. " -e " .. L.quote(prefix .. "/error.log") .. " </dev/null >" .. L.quote(prefix .. "/stderr.log")
    .. " 2>&1 & echo $!"))
  local deadline = socket.gettime() + 5
  while true do
    if L.exists(prefix .. "/nginx.pid") then
      local c = socket.connect("127.0.0.1", port)
      if c then c:close(); break end
    end
    if socket.gettime() > deadline or not alive(self.launcher) then
      local log = (L.read_file(prefix .. "/error.log") or "") .. (L.read_file(prefix .. "/stderr.log") or "")
      self:stop()
      error("bench nginx did not start: " .. log, 0)
    end
    socket.sleep(0.01)
  end
  return self
end

return L
