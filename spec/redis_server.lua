-- A real redis-server for specs: on a free loopback port, in a temporary
-- folder, with nothing saved to disk; stopped (and restarted on the same
-- port) by the spec, and by GNU timeout should the spec never stop it.

local support = require "support"
local socket = require "socket"

local M = {}
local LIFETIME = 300   -- seconds; the server stops by itself after that

local function exists(path) return support.try_read(path) ~= nil end

-- Debian's lua-redis installs redis.lua for Lua 5.1-5.3 only; the module is
-- plain Lua and runs under 5.4 too (see docs/many-machines.md).
M.LUA_DIR = nil
for _, v in ipairs { support.LUA_VERSION, "5.3", "5.1" } do
  if exists("/usr/share/lua/" .. v .. "/redis.lua") then
    M.LUA_DIR = "/usr/share/lua/" .. v
    break
  end
end
M.PATH = M.LUA_DIR and (M.LUA_DIR .. "/?.lua;") or ""
package.path = package.path .. ";" .. M.PATH

-- Lines a child script (support.write_script) starts with to find it too.
M.PRELUDE = ("package.path = package.path .. %q\n"):format(";" .. M.PATH)

local Server = {}
Server.__index = Server

local quote = support.quote

-- Starts (again) on its port; waits until it answers.
function Server:start()
  local args = { "--port", self.port, "--bind", "127.0.0.1", "--save", "''", "--appendonly", "no",
    "--dir", quote(self.dir) }
  for _, a in ipairs(self.extra) do args[#args + 1] = quote(a) end
  local out = support.run("timeout -s TERM -k 3 " .. LIFETIME .. " redis-server " .. table.concat(args, " ")
    .. " >>" .. quote(self.dir .. "/log") .. " 2>&1 </dev/null & echo $!")
  self.pid = tonumber(out:match("%d+"))
  local deadline = socket.gettime() + 5
  while true do
    local c = socket.connect("127.0.0.1", self.port)
    if c then c:close(); return self end
    local alive = os.execute("kill -0 " .. self.pid .. " 2>/dev/null")
    if socket.gettime() > deadline or not (alive == true or alive == 0) then
      error("redis-server did not start:\n" .. (support.run("cat " .. quote(self.dir .. "/log"))))
    end
    socket.sleep(0.02)
  end
end

-- Stops it and waits until the port is closed.
function Server:stop()
  if not self.pid then return end
  os.execute("kill -TERM " .. self.pid .. " 2>/dev/null")
  local deadline = socket.gettime() + 5
  while socket.gettime() < deadline do
    local c = socket.connect("127.0.0.1", self.port)
    if not c then break end
    c:close()
    socket.sleep(0.02)
  end
  os.execute("kill -KILL " .. self.pid .. " 2>/dev/null")
  self.pid = nil
end

function Server:remove()
  self:stop()
  support.remove_dir(self.dir)
end

-- redis-cli with the server's address and auth; returns its output.
function Server:cli(args)
  local auth = ""
  if self.password then
    auth = (self.user and ("--user " .. quote(self.user) .. " ") or "") .. "--pass " .. quote(self.password)
      .. " --no-auth-warning "
  end
  return (support.run("redis-cli -p " .. self.port .. " " .. auth .. args))
end

-- opts.password: --requirepass; opts.user + opts.password: an ACL user of
-- that name (the default user then has no access).
function M.start(opts)
  opts = opts or {}
  local self = setmetatable({ port = support.free_port(), dir = support.tmpdir(), extra = {},
    user = opts.user, password = opts.password }, Server)
  if opts.user then
    self.extra = { "--user", "default", "off", "--user", opts.user, "on", ">" .. opts.password, "~*", "&*", "+@all" }
  elseif opts.password then
    self.extra = { "--requirepass", opts.password }
  end
  return self:start()
end

function Server:url(db)
  local auth = ""
  if self.password then auth = (self.user or "") .. ":" .. self.password .. "@" end
  return "redis://" .. auth .. "127.0.0.1:" .. self.port .. "/" .. (db or 0)
end

return M
