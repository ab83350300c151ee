-- A raw TCP server that answers HTTP badly on purpose, for
-- spec/hostile_server_spec.lua: dripping, endless, truncated and malformed
-- answers, chosen by the request path (POST /CASE/...).
--
-- Started by spec/child_server.lua's start. Serves many connections at
-- once (one coroutine each, so a dripping answer does not hold up the next
-- case).

local socket = require "socket"
local child = require "child_server"

local DRIP = 0.05          -- seconds between dripped bytes
local DRIP_FOR = 4         -- seconds a drip goes on before the server gives up
local ENDLESS_FOR = 4      -- seconds an endless answer goes on at most
local ENDLESS_BYTES = 96 * 1024 * 1024   -- and at most this many bytes
local FILLER = string.rep("a", 65536)
local ENVELOPE = '{"result":{"ok":true},"time":{"start":1,"finish":1,"duration":0,"processing":0}}'

-- Inside a connection's coroutine: wait a while, or until readable.
local function sleep(s) coroutine.yield("sleep", s) end

-- Sends all of s; false when the client is gone.
local function send(c, s)
  local i = 1
  while i <= #s do
    local last, err, partial = c:send(s, i)
    if last then return true end
    if err ~= "timeout" then return false end
    i = partial + 1
    coroutine.yield("write")
  end
  return true
end

local function drip(c, s, seconds)
  local stop = socket.gettime() + (seconds or DRIP_FOR)
  local i = 1
  while socket.gettime() < stop do
    if not send(c, s:sub(i, i)) then return end
    i = i % #s + 1
    sleep(DRIP)
  end
end

-- Sends prefix, then unit again and again: until the client goes, or the
-- bounds above are reached.
local function endless(c, prefix, unit)
  if not send(c, prefix) then return end
  local stop, sent = socket.gettime() + ENDLESS_FOR, 0
  while socket.gettime() < stop and sent < ENDLESS_BYTES do
    if not send(c, unit) then return end
    sent = sent + #unit
  end
end

local function head(extra)
  return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" .. (extra or "")
end

local function ok_answer(extra)
  return head(extra) .. "Content-Length: " .. #ENVELOPE .. "\r\n\r\n" .. ENVELOPE
end

local CASES = {
  silence = function() sleep(DRIP_FOR) end,
  drip_header = function(c) drip(c, head() .. "X-Drip: " .. string.rep("x", 1000)) end,
  drip_body = function(c)
    if send(c, head("Content-Length: 100000\r\n\r\n")) then drip(c, "{") end
  end,
  endless_status = function(c) endless(c, "HTTP/1.1 200 ", FILLER) end,
  endless_header = function(c) endless(c, head() .. "X-Big: ", FILLER) end,
  -- One whole header line, then a fine answer: above both transports'
  -- 16 KiB a line, and above libcurl's own 100 KiB.
  long_header_20k = function(c) send(c, ok_answer("X-Long: " .. string.rep("l", 20 * 1024) .. "\r\n")) end,
  long_header_150k = function(c) send(c, ok_answer("X-Long: " .. string.rep("l", 150 * 1024) .. "\r\n")) end,
  many_headers = function(c)
    endless(c, head(), "X-Many: " .. string.rep("m", 8000) .. "\r\n")
  end,
  endless_body = function(c) endless(c, head("Connection: close\r\n\r\n"), FILLER) end,
  endless_chunked = function(c)
    endless(c, head("Transfer-Encoding: chunked\r\n\r\n"), "10000\r\n" .. FILLER .. "\r\n")
  end,
  huge_chunk_size = function(c) endless(c, head("Transfer-Encoding: chunked\r\n\r\n1"), FILLER:gsub("a", "0")) end,
  endless_trailers = function(c)
    endless(c, head("Transfer-Encoding: chunked\r\n\r\n") .. "2\r\n{}\r\n0\r\nX-Trailer: ", FILLER)
  end,
  truncated = function(c) send(c, head("Content-Length: 1000\r\n\r\n") .. '{"result":') end,
  malformed_status = function(c) send(c, "HTTP/1.1 OK\r\nContent-Length: 2\r\n\r\n{}") end,
  malformed_chunk = function(c)
    send(c, head("Transfer-Encoding: chunked\r\n\r\n") .. "zz\r\n" .. ENVELOPE .. "\r\n0\r\n\r\n")
  end,
  same_lengths = function(c) send(c, ok_answer("Content-Length: " .. #ENVELOPE .. "\r\n")) end,
  -- (the wrong length last: libcurl 7.88 takes the last one)
  differing_lengths = function(c)
    send(c, head("Content-Length: " .. #ENVELOPE .. "\r\nContent-Length: " .. (#ENVELOPE + 5) .. "\r\n\r\n")
      .. ENVELOPE)
  end,
  -- The interim answer's own Content-Length must not be merged into the
  -- final answer's.
  continue = function(c)
    send(c, "HTTP/1.1 100 Continue\r\nContent-Length: 3\r\nX-Interim: 1\r\n\r\n" .. ok_answer())
  end,
  fine = function(c) send(c, ok_answer()) end,
}

-- Reads the request (headers and a Content-Length body), then answers.
local function serve(c)
  local request, body_len = {}, 0
  while true do
    local line, err = c:receive("*l")
    while not line and err == "timeout" do
      coroutine.yield("read")
      line, err = c:receive("*l")
    end
    if not line then return end
    if line == "" then break end
    request[#request + 1] = line
    local n = line:lower():match("^content%-length:%s*(%d+)")
    if n then body_len = tonumber(n) end
  end
  local got = 0
  while got < body_len do
    local data, err, partial = c:receive(body_len - got)
    data = data or partial
    got = got + #data
    if err and err ~= "timeout" then return end
    if got < body_len then coroutine.yield("read") end
  end
  local name = (request[1] or ""):match("^%u+ /([%w_]+)")
  local case = CASES[name]
  if case then
    case(c)
  else
    send(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
  end
end

local server, _, running = child.listen()
server:settimeout(0)

local tasks = {}   -- { co, sock, wait = "read"|"write"|"sleep", wake }

local function resume(t)
  local ok, wait, s = coroutine.resume(t.co, t.sock)
  if not ok or coroutine.status(t.co) == "dead" then
    t.sock:close()
    t.dead = true
    return
  end
  t.wait = wait
  t.wake = wait == "sleep" and socket.gettime() + s or nil
end

while running() do
  local readers, writers = { server }, {}
  local now, timeout = socket.gettime(), 0.2
  for _, t in ipairs(tasks) do
    if t.wait == "read" then readers[#readers + 1] = t.sock
    elseif t.wait == "write" then writers[#writers + 1] = t.sock
    else timeout = math.max(0, math.min(timeout, t.wake - now)) end
  end
  local r, w = socket.select(readers, writers, timeout)
  local ready = {}
  for _, s in ipairs(r) do ready[s] = true end
  for _, s in ipairs(w) do ready[s] = true end
  if ready[server] then
    local c = server:accept()
    if c then
      c:settimeout(0)
      c:setoption("tcp-nodelay", true)
      tasks[#tasks + 1] = { co = coroutine.create(serve), sock = c }
      resume(tasks[#tasks])
    end
  end
  now = socket.gettime()
  local alive = {}
  for _, t in ipairs(tasks) do
    if not t.dead and (ready[t.sock] or (t.wait == "sleep" and t.wake <= now)) then resume(t) end
    if not t.dead then alive[#alive + 1] = t end
  end
  tasks = alive
end
for _, t in ipairs(tasks) do t.sock:close() end
server:close()
