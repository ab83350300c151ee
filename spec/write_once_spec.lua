-- A write is never sent twice by our choice, not even by libcurl's: when a
-- reused keep-alive connection closes before any byte of the answer,
-- libcurl sends the request again on a fresh connection. A raw TCP server
-- (a child process) answers the first request and keeps that connection
-- alive, then reads every later request whole and closes without a word;
-- it logs each request line it read.

local support = require "support"
local bitrix24 = require "bitrix24"

-- The server: argv = port file, log file. Ends by itself after 20 s.
local SERVER = [==[
local socket = require "socket"
local port_file, log_file = arg[1], arg[2]
local server = assert(socket.bind("127.0.0.1", 0))
server:settimeout(0.2)
local f = assert(io.open(port_file .. ".tmp", "w"))
local _, port = server:getsockname()
f:write(port)
f:close()
assert(os.rename(port_file .. ".tmp", port_file))
local log = assert(io.open(log_file, "a"))
local answered, clients, stop = false, {}, socket.gettime() + 20

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

while socket.gettime() < stop do
  local ready = socket.select({ server, table.unpack(clients) }, nil, 0.2)
  for _, s in ipairs(ready) do
    if s == server then
      local c = server:accept()
      if c then c:settimeout(2); clients[#clients + 1] = c end
    else
      local line = read_request(s)
      if line then
        log:write(line, "\n")
        log:flush()
      end
      if line and not answered then
        answered = true
        local body = '{"result":[],"time":{"operating":0}}'
        s:send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " .. #body
          .. "\r\nConnection: keep-alive\r\n\r\n" .. body)
      else
        s:close()
        for i, c in ipairs(clients) do if c == s then table.remove(clients, i) break end end
      end
    end
  end
end
]==]

describe("a write on a keep-alive connection the server drops", function()
  local dir, pid, port

  local function read(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local s = f:read("*a")
    f:close()
    return s
  end

  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    local script = assert(io.open(dir .. "/server.lua", "w"))
    -- table.unpack is unpack on 5.1 and LuaJIT.
    script:write("table.unpack = table.unpack or unpack\n", SERVER)
    script:close()
    local p = assert(io.popen(support.LUA .. " " .. dir .. "/server.lua " .. dir .. "/port " .. dir
      .. "/log >" .. dir .. "/out 2>&1 & echo $!"))
    pid = tonumber(p:read("*l"))
    p:close()
    local socket = require "socket"
    local until_ = socket.gettime() + 5
    while not read(dir .. "/port") and socket.gettime() < until_ do socket.sleep(0.02) end
    port = assert(tonumber(read(dir .. "/port")), "the server did not start: " .. tostring(read(dir .. "/out")))
  end)

  teardown(function()
    if pid then os.execute("kill " .. pid .. " 2>/dev/null") end
    if dir then os.execute("rm -rf " .. dir) end
  end)

  it("is sent once, and the call returns NETWORK_ERROR", function()
    local client = bitrix24.webhook("http://127.0.0.1:" .. port .. "/rest/1/secretcode1234/",
      support.opts { retry_writes = false, tries = 1 })
    -- A read first: answered, so the connection is kept alive.
    assert(client:call("crm.lead.contact.items.get", { id = 1 }))
    local result, err = client:call("crm.lead.contact.add", { id = 1, fields = { CONTACT_ID = 5 } })
    client:close()
    assert.is_nil(result)
    assert.equal("NETWORK_ERROR", err.code)
    local writes = 0
    for line in read(dir .. "/log"):gmatch("[^\n]+") do
      if line:find("crm.lead.contact.add", 1, true) then writes = writes + 1 end
    end
    assert.equal(1, writes, "the server saw the write " .. writes .. " times")
  end)
end)
