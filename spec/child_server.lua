-- A raw TCP server of a spec, run in a child process: the spec's side
-- (start, stop, what the server logged) and the child's (listen, and
-- whether to keep running). Shared by spec/hostile_server.lua and
-- spec/once_server.lua.
--
-- The child is started as `LUA SCRIPT DIR PARENT_PID LIFETIME`, with this
-- folder on its package.path. It writes its port to DIR/port once
-- listening, may log to DIR/log, and stops by itself after LIFETIME
-- seconds or when PARENT_PID is gone: a spec that never reaches its
-- teardown leaves nothing running.

local socket = require "socket"
local support = require "support"

local read, quote = support.try_read, support.quote

local M = {}

-- Whether process pid runs. A zombie counts as gone: nothing may reap an
-- orphan in a container.
function M.alive(pid)
  local stat = read("/proc/" .. pid .. "/stat")
  if not stat then
    local r = os.execute("kill -0 " .. pid .. " 2>/dev/null")
    return r == true or r == 0   -- (5.1 and LuaJIT return the status)
  end
  return stat:match("%)%s+(%S)") ~= "Z"
end

---------------------------------------------------------------- the spec's side

-- Starts spec/<script> (lifetime in seconds, default 60) and waits for its
-- port; returns { pid, dir, port, base = "http://127.0.0.1:PORT" }.
function M.start(script, lifetime)
  local dir = support.tmpdir()
  local spec_dir = support.ROOT .. "/spec/"
  local parent = read("/proc/self/stat"):match("^%d+")
  local path = ("package.path = %q .. package.path"):format(spec_dir .. "?.lua;")
  local p = assert(io.popen(support.LUA .. " -e " .. quote(path) .. " " .. quote(spec_dir .. script) .. " "
    .. quote(dir) .. " " .. parent .. " " .. (lifetime or 60) .. " >" .. quote(dir .. "/out") .. " 2>&1 & echo $!"))
  local pid = tonumber(p:read("*l"))
  p:close()
  local until_ = socket.gettime() + 5
  while not read(dir .. "/port") and socket.gettime() < until_ do socket.sleep(0.02) end
  local port = tonumber(read(dir .. "/port"))
  if not port then
    local out = read(dir .. "/out")
    M.stop { pid = pid, dir = dir }
    error(script .. " did not start: " .. tostring(out))
  end
  return { pid = pid, dir = dir, port = port, base = "http://127.0.0.1:" .. port }
end

function M.stop(s)
  if not s then return end
  os.execute("kill " .. s.pid .. " 2>/dev/null")
  support.remove_dir(s.dir)
end

-- What the server wrote to DIR/log ("" when nothing).
function M.log(s)
  return read(s.dir .. "/log") or ""
end

---------------------------------------------------------------- the child's side

-- Listens on a free port of 127.0.0.1 and says so in DIR/port (renamed
-- into place, so the spec never reads half a number). Returns the server
-- socket, DIR, and running(): false once LIFETIME is over or the parent
-- is gone.
function M.listen()
  local dir, parent, lifetime = arg[1], tonumber(arg[2]), tonumber(arg[3])
  local server = assert(socket.bind("127.0.0.1", 0))
  local _, port = server:getsockname()
  local f = assert(io.open(dir .. "/port.tmp", "w"))
  f:write(port)
  f:close()
  assert(os.rename(dir .. "/port.tmp", dir .. "/port"))
  local stop_at = socket.gettime() + lifetime
  local function running() return socket.gettime() < stop_at and M.alive(parent) end
  return server, dir, running
end

return M
