-- A small nginx (with the Lua module) for specs that run the client inside
-- it: locations served by Lua files of spec/nginx/, the repository's lua/
-- and the LuaJIT core on the package paths, stopped by the spec (and by
-- GNU timeout should the spec never stop it).
--
-- The nginx runs LuaJIT whichever Lua runs busted, so specs use it under
-- one version of the multi-version suite only (RUN_UNDER).

local support = require "support"
local child = require "child_server"
local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"

local M = {
  RUN_UNDER = "5.4",
  PENDING = "runs under Lua 5.4 only (the nginx runs its own LuaJIT)",
}
local LIFETIME = 300   -- seconds; the nginx stops by itself after that

local quote, capture, write_file = support.quote, support.capture, support.write_file

local function exists(path) return support.try_read(path) ~= nil end

local function module_lines()
  for _, dir in ipairs { "/usr/lib/nginx/modules", "/usr/lib64/nginx/modules", "/usr/local/nginx/modules" } do
    if exists(dir .. "/ngx_http_lua_module.so") then
      local lines = ""
      if exists(dir .. "/ndk_http_module.so") then lines = "load_module " .. dir .. "/ndk_http_module.so;\n" end
      return lines .. "load_module " .. dir .. "/ngx_http_lua_module.so;\n"
    end
  end
  return ""   -- built in (OpenResty)
end

M.free_port = support.free_port

-- The nginx block right after the line `marker` in doc (a path in the
-- repository): the configuration a spec runs is the one the docs show.
function M.doc_block(doc, marker)
  local text = support.read_file(support.ROOT .. "/" .. doc)
  local at = assert(text:find(marker, 1, true), doc .. " has no line " .. marker)
  return assert(text:match("^%s*```nginx\n(.-)\n```", at + #marker), "no ```nginx block after " .. marker)
end

-- s with every occurrence of old (plain text) replaced, and at least one:
-- a docs edit that drops a placeholder must fail here, not run a
-- different configuration.
function M.replace(s, old, new)
  local out, from, n = {}, 1, 0
  while true do
    local a, b = s:find(old, from, true)
    if not a then break end
    out[#out + 1] = s:sub(from, a - 1) .. new
    from, n = b + 1, n + 1
  end
  assert(n > 0, "the docs' nginx.conf lost " .. old)
  return table.concat(out) .. s:sub(from)
end

function M.runs_here()
  return support.LUA_VERSION == M.RUN_UNDER
end

function M.urlencode(s)
  return (s:gsub("[^%w%-%._~/]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- A process's resident memory in KiB.
function M.rss_kib(pid)
  local status = support.read_file("/proc/" .. pid .. "/status")
  local kib = assert(status:match("VmRSS:%s*(%d+)"), "no VmRSS for " .. pid)
  return tonumber(kib)
end

local Server = {}
Server.__index = Server

-- GET path; the body (asserts a 200).
function Server:get(path, timeout)
  local chunks = {}
  local ok, status = http.request {
    url = self.base .. path, sink = ltn12.sink.table(chunks),
    create = function()
      local s = socket.tcp()
      s:settimeout(timeout or 30)
      return s
    end,
  }
  local body = table.concat(chunks)
  assert(ok and status == 200, "GET " .. path .. ": " .. tostring(status) .. " " .. body
    .. "\n" .. self:error_log())
  return body
end

function Server:error_log()
  return support.read_file(self.prefix .. "/error.log")
end

function Server:stop()
  local pid = exists(self.prefix .. "/nginx.pid") and support.read_file(self.prefix .. "/nginx.pid"):match("%d+")
  if pid then os.execute("kill -TERM " .. pid .. " 2>/dev/null") end
  local deadline = socket.gettime() + 3
  while child.alive(self.launcher) and socket.gettime() < deadline do socket.sleep(0.05) end
  os.execute("kill -KILL " .. self.launcher .. " 2>/dev/null")
  os.execute("rm -rf " .. quote(self.prefix))
end

-- The repository's root as an absolute path, with the LuaJIT core built
-- for it (always through make: a core older than src/ would not match lua/).
function M.root()
  local root = capture("cd " .. quote(support.ROOT) .. " && pwd")
  local out, err, status = support.run("make -s -C " .. quote(root) .. " LUA_VERSION=luajit build")
  assert(status == 0, "building the LuaJIT core failed: " .. out .. err)
  return root
end

-- The main-context lines of a spec nginx in prefix, up to its events block.
function M.main_lines(prefix, connections)
  return table.concat({
    "daemon off;",
    "master_process on;",
    "worker_processes 1;",
    'pid "' .. prefix .. '/nginx.pid";',
    'error_log "' .. prefix .. '/error.log" warn;',
    support.run("id -u") == "0\n" and "user root;" or "",
    module_lines(),
    "events { worker_connections " .. connections .. "; }",
  }, "\n")
end

-- The http-level lines every spec nginx has: its temporary files in
-- prefix, no access log, no socket errors logged (the specs make many).
function M.http_lines(prefix)
  return {
    'client_body_temp_path "' .. prefix .. '/tmp/body";',
    'proxy_temp_path "' .. prefix .. '/tmp/proxy";',
    'fastcgi_temp_path "' .. prefix .. '/tmp/fastcgi";',
    'uwsgi_temp_path "' .. prefix .. '/tmp/uwsgi";',
    'scgi_temp_path "' .. prefix .. '/tmp/scgi";',
    "access_log off;",
    "lua_socket_log_errors off;",
  }
end

-- Starts an nginx in a fresh prefix directory with conf(prefix) as its
-- nginx.conf, and waits until it accepts on port (one it listens on).
-- env: variables for nginx ({ NAME = value }). GNU timeout stops it after
-- LIFETIME seconds, should the spec never stop it.
function M.launch(port, conf, env)
  local prefix = capture('mktemp -d "${TMPDIR:-/tmp}/b24-nginx-harness.XXXXXXXX"')
  os.execute("mkdir -p " .. quote(prefix .. "/tmp"))
  write_file(prefix .. "/nginx.conf", conf(prefix))
  write_file(prefix .. "/error.log", "")
  local vars = ""
  for k, v in pairs(env or {}) do vars = vars .. k .. "=" .. quote(v) .. " " end
  local launcher = tonumber(capture(vars .. "timeout -s TERM -k 3 " .. LIFETIME .. " nginx -p " .. quote(prefix .. "/")
    .. " -c " .. quote(prefix .. "/nginx.conf") .. " -e " .. quote(prefix .. "/error.log")
    .. " </dev/null >" .. quote(prefix .. "/stderr.log") .. " 2>&1 & echo $!"))
  local self = setmetatable({ prefix = prefix, launcher = launcher, base = "http://127.0.0.1:" .. port }, Server)
  local deadline = socket.gettime() + 5
  while true do
    local c = socket.connect("127.0.0.1", port)
    if c then c:close(); break end
    if socket.gettime() > deadline then
      local log = self:error_log() .. support.read_file(prefix .. "/stderr.log")
      self:stop()
      error("nginx did not start:\n" .. log)
    end
    socket.sleep(0.02)
  end
  return self
end

-- locations: { ["/path"] = "spec/nginx/file.lua", ... } (prefix locations;
-- files relative to the repository's root).
function M.start(locations)
  local root = M.root()
  local port = M.free_port()
  local locs = {}
  for path, file in pairs(locations) do
    locs[#locs + 1] = "    location " .. path .. ' { content_by_lua_file "' .. root .. "/" .. file .. '"; }'
  end
  return M.launch(port, function(prefix)
    return table.concat({
      M.main_lines(prefix, 256),
      "http {",
      "  " .. table.concat(M.http_lines(prefix), "\n  "),
      '  lua_package_path "' .. root .. "/lua/?.lua;" .. root .. '/lua/?/init.lua;;";',
      '  lua_package_cpath "' .. root .. '/build/luajit/?.so;;";',
      "  lua_shared_dict bitrix24 1m;",
      "  server {",
      "    listen 127.0.0.1:" .. port .. ";",
      table.concat(locs, "\n"),
      "  }",
      "}",
    }, "\n")
  end)
end

return M
