-- A raw TCP server for spec/send_once_spec.lua: it answers only the first
-- request of each connection and keeps that connection alive; a later
-- request on the same connection, any write (a method ending in .add) and
-- any token request (/oauth/token/) it reads whole and then closes the
-- connection without a byte of answer. So a request sent again on a fresh
-- connection is answered when it is a read, dropped again otherwise.
-- Paths under /expired/ are answered 401 expired_token (an OAuth client
-- then asks the token endpoint).
--
--   lua once_server.lua PORT_FILE LOG_FILE PARENT_PID
--
-- Writes its port to PORT_FILE once listening, appends each request line
-- it read to LOG_FILE, and stops by itself after 30 s or when PARENT_PID
-- is gone.

local socket = require "socket"
local unpack = table.unpack or unpack

local port_file, log_file, parent = arg[1], arg[2], arg[3]
local LIFETIME = 30

local function parent_alive()
  local f = io.open("/proc/" .. parent .. "/stat", "rb")
  if not f then return false end
  local stat = f:read("*a")
  f:close()
  return stat:match("%)%s+(%S)") ~= "Z"
end

local server = assert(socket.bind("127.0.0.1", 0))
server:settimeout(0.2)
local _, port = server:getsockname()
local f = assert(io.open(port_file .. ".tmp", "w"))
f:write(port)
f:close()
assert(os.rename(port_file .. ".tmp", port_file))
local log = assert(io.open(log_file, "a"))

-- One whole request from c: its request line, or nil when c closed.
local function read_request(c)
  local line = c:receive("*l")
  if not line then return nil end
  local length = 0
  while true do
    local h = c:receive("*l")
    if not h or h == "" then break end
    local n = h:lower():match("^content%-length:%s*(%d+)")
    if n then length = tonumber(n) end
  end
  if length > 0 then c:receive(length) end
  return line
end

local function answer(c, status, body)
  c:send("HTTP/1.1 " .. status .. "\r\nContent-Type: application/json\r\nContent-Length: " .. #body
    .. "\r\nConnection: keep-alive\r\n\r\n" .. body)
end

local clients, served = {}, {}   -- served[c]: requests read on c so far
local stop = socket.gettime() + LIFETIME
while socket.gettime() < stop and parent_alive() do
  local ready = socket.select({ server, unpack(clients) }, nil, 0.2)
  for _, s in ipairs(ready) do
    if s == server then
      local c = server:accept()
      if c then c:settimeout(2); clients[#clients + 1] = c; served[c] = 0 end
    else
      local line = read_request(s)
      if line then
        log:write(line, "\n")
        log:flush()
        served[s] = served[s] + 1
      end
      local drop = not line or served[s] > 1 or line:find("/oauth/token", 1, true)
        or line:find("%.add[%s/?.]")
      if drop then
        s:close()
        served[s] = nil
        for i, c in ipairs(clients) do if c == s then table.remove(clients, i) break end end
      elseif line:find("/expired/", 1, true) then
        answer(s, "401 Unauthorized", '{"error":"expired_token","error_description":"The access token provided has expired."}')
      else
        answer(s, "200 OK", '{"result":[],"time":{"operating":0}}')
      end
    end
  end
end
