-- A raw TCP server for spec/send_once_spec.lua: it answers only the first
-- request of each connection and keeps that connection alive; a later
-- request on the same connection, any write (a method ending in .add) and
-- any token request (/oauth/token/) it reads whole and then closes the
-- connection without a byte of answer. So a request sent again on a fresh
-- connection is answered when it is a read, dropped again otherwise.
-- Paths under /expired/ are answered 401 expired_token (an OAuth client
-- then asks the token endpoint).
--
-- Started by spec/child_server.lua's start; appends each request line it
-- read to DIR/log.

local socket = require "socket"
local child = require "child_server"
local unpack = table.unpack or unpack

local server, dir, running = child.listen()
server:settimeout(0.2)
local log = assert(io.open(dir .. "/log", "a"))

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
while running() do
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
