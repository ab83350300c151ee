-- Shared pieces for the specs: one fake portal per spec file, a way to run
-- our commands, and a reference JSON reader that keeps what the client's
-- decoder must keep (integer vs float literals, null, [] vs {}), written
-- independently of cjson so the two can disagree.

local M = {}

-- The interpreter running the specs, unless LUA and LUA_VERSION say
-- (spec/run sets both; luarocks test sets neither).
local RUNNING = rawget(_G, "jit") and "luajit" or (_VERSION:match("%d+%.%d+"))
M.LUA = os.getenv("LUA") or (RUNNING == "luajit" and "luajit" or "lua" .. RUNNING)
M.LUA_VERSION = os.getenv("LUA_VERSION") or RUNNING
M.HAS_INTEGERS = math.type ~= nil

-- Client options for specs that test something other than pacing and
-- retries: the spec portals allow 1000 requests a second, and one try
-- shows each failure as it comes.
function M.opts(extra)
  local o = { rate = 1000, burst = 100000, tries = 1 }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

function M.start_portal(opts)
  local fake = require "bitrix24.fake.server"
  opts = opts or {}
  if opts.timeout == nil then opts.timeout = 600 end
  return fake.start(opts)
end

-- Inside a describe: one fake portal for its tests, started in setup,
-- stopped in teardown and reset before each test. opts (or a function
-- returning them, called in setup): start_portal's options over
-- { tls = false, rate = 1000, burst = 100000 }, plus
--   client = true|table  also a webhook client with M.opts() (a table: the
--                        client's options over those); closed in teardown
--   reset = false|table  no reset before each test, or portal:reset's argument
-- set(portal, client) is called once they are started, so the describe's
-- own locals hold them (busted runs setup after the describe's body).
function M.use_portal(opts, set)
  local busted = require "busted"
  local portal, client, reset
  busted.setup(function()
    local start, client_opts = { tls = false, rate = 1000, burst = 100000 }, nil
    if type(opts) == "function" then opts = opts() end
    for k, v in pairs(opts or {}) do
      if k == "client" then client_opts = v
      elseif k == "reset" then reset = v
      else start[k] = v end
    end
    portal = M.start_portal(start)
    if client_opts then
      client = require("bitrix24").webhook(portal.webhook_url,
        M.opts(type(client_opts) == "table" and client_opts or nil))
    end
    set(portal, client)
  end)
  busted.teardown(function()
    if client then client:close() end
    if portal then portal:stop() end
  end)
  busted.before_each(function()
    if reset ~= false then portal:reset(reset) end
  end)
end

-- The config of bitrix24.oauth for the portal's current tokens and app,
-- with extra's fields over it; also returns portal:info().
function M.oauth_config(portal, extra)
  local info = portal:info()
  local cfg = {
    endpoint = portal.oauth_endpoint, token_url = portal.token_url,
    access_token = info.access_token, refresh_token = info.refresh_token,
    client_id = info.client_id, client_secret = info.client_secret,
  }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  return cfg, info
end

-- A fresh temporary directory; M.remove_dir removes it.
function M.tmpdir()
  return (M.run("mktemp -d"):gsub("%s+$", ""))
end

function M.remove_dir(dir)
  if dir then os.execute("rm -rf '" .. dir .. "'") end
end

-- Runs a shell command; returns stdout, stderr and the exit status.
function M.run(cmd, env)
  local out, err = os.tmpname(), os.tmpname()
  local prefix = ""
  for k, v in pairs(env or {}) do
    prefix = prefix .. k .. "=" .. M.quote(v) .. " "
  end
  local full = prefix .. cmd .. " >" .. out .. " 2>" .. err .. "; echo $? >>" .. err
  os.execute(full)
  local function slurp(path)
    local f = io.open(path, "rb")
    local s = f and f:read("*a") or ""
    if f then f:close() end
    os.remove(path)
    return s
  end
  local stdout, stderr = slurp(out), slurp(err)
  local status = tonumber(stderr:match("(%d+)%s*$"))
  stderr = stderr:gsub("%d+%s*$", "")
  return stdout, stderr, status
end

-- Writes a Lua script for a child process (run with M.LUA) that loads
-- this checkout's modules and core, then runs `body`; returns its path.
function M.write_script(path, body)
  local f = assert(io.open(path, "w"))
  f:write(("package.path = %q .. package.path\npackage.cpath = %q .. package.cpath\n"):format(
    M.ROOT .. "/lua/?.lua;", M.ROOT .. "/build/" .. M.LUA_VERSION .. "/?.so;"), body)
  f:close()
  return path
end

-- Runs a script in two processes at the same time, the first with the
-- argument a, the second with b; returns their output.
function M.run_two(script, a, b)
  return M.run("(" .. M.LUA .. " " .. script .. " " .. (a or "") .. " & " .. M.LUA .. " " .. script .. " "
    .. (b or "") .. " & wait)")
end

-- Ids (as strings, ascending) of the records of kind ("leads", "contacts")
-- of the fake portal's default data that the webhook user may read.
function M.readable_ids(kind)
  local ids = {}
  for _, rec in ipairs(require("bitrix24.fake.data")()[kind]) do
    if rec.access ~= "none" then ids[#ids + 1] = rec.ID end
  end
  table.sort(ids)
  for i, id in ipairs(ids) do ids[i] = string.format("%d", id) end
  return ids
end

-- An ordered JSON map (bitrix24.fake.json) from alternating key, value
-- arguments: a batch's cmd whose keys keep their order.
function M.ordered(...)
  local json = require "bitrix24.fake.json"
  local m = json.omap()
  for i = 1, select("#", ...), 2 do
    local k, v = select(i, ...)
    json.set(m, k, v)
  end
  return m
end

function M.read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- The file's content, or nil when it cannot be read (not there yet).
function M.try_read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

function M.write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

-- s as one word for sh.
function M.quote(s) return "'" .. tostring(s):gsub("'", [['\'']]) .. "'" end

-- A free TCP port on 127.0.0.1 (bound, read, let go).
function M.free_port()
  local s = assert(require("socket").bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- Polls cond every 20 ms for at most `seconds`; its last value (truthy
-- once it held).
function M.eventually(seconds, cond)
  local socket = require "socket"
  local deadline = socket.gettime() + seconds
  while socket.gettime() < deadline do
    local v = cond()
    if v then return v end
    socket.sleep(0.02)
  end
  return cond()
end

-- A shell command's output, without its trailing white space.
function M.capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("*a")
  p:close()
  return (out:gsub("%s+$", ""))
end

-- One HTTP request with luasocket, for specs that talk to the fake portal
-- without the client. `body`: a table is sent as JSON (bitrix24.fake.json,
-- so ordered maps keep their order), a string as a form unless o.ctype
-- says otherwise. o: method (default POST), query, ctype, timeout (seconds
-- per socket operation, default 10). Returns { status, body (raw text),
-- data (decoded, integers kept; nil if not JSON), headers }.
function M.send(url, body, o)
  local json = require "bitrix24.fake.json"
  local socket, http, ltn12 = require "socket", require "socket.http", require "ltn12"
  o = o or {}
  local raw, ctype = nil, o.ctype
  if type(body) == "table" then
    raw, ctype = json.encode(body), ctype or "application/json"
  elseif type(body) == "string" then
    raw, ctype = body, ctype or "application/x-www-form-urlencoded"
  end
  if o.query then url = url .. "?" .. o.query end
  local headers = { ["content-length"] = raw and #raw or 0 }
  if raw then headers["content-type"] = ctype end
  local chunks = {}
  local ok, status, res_headers = http.request {
    url = url,
    method = o.method or "POST",
    headers = headers,
    source = raw and ltn12.source.string(raw) or nil,
    sink = ltn12.sink.table(chunks),
    create = function()
      local s = socket.tcp()
      s:settimeout(o.timeout or 10)
      return s
    end,
  }
  assert(ok, "HTTP request to " .. url .. " failed: " .. tostring(status))
  local text = table.concat(chunks)
  return { status = status, body = text, data = json.decode(text), headers = res_headers or {} }
end

-- POST `body` as JSON to `url`. Returns the status, the decoded answer
-- (integers kept) and the seconds it took.
function M.post_json(url, body)
  local socket = require "socket"
  local t0 = socket.gettime()
  local r = M.send(url, body or {}, { timeout = 30 })
  return r.status, r.data, socket.gettime() - t0
end

-- The repository root, from this file's location.
M.ROOT = (debug.getinfo(1, "S").source:match("^@(.*)/spec/[^/]+$") or ".")

-- Response bodies recorded from real portals (where each comes from: its
-- INDEX.md). Kept in the repository so a plain clone runs every spec.
M.REAL_RESPONSES = M.ROOT .. "/spec/fixtures/real-responses"

---------------------------------------------------------------- reference JSON

-- Values: strings, { int = "123" }, { float = "1.5" }, true/false,
-- M.NULL, { array = {...} }, { object = { key = value } }.
M.NULL = setmetatable({}, { __tostring = function() return "null" end })

local function parser(s)
  local i = 1
  local function ws() i = s:find("[^ \t\r\n]", i) or #s + 1 end
  local value
  local function str()
    local out = {}
    i = i + 1
    while true do
      local c = s:sub(i, i)
      if c == '"' then i = i + 1; break end
      if c == "\\" then
        local e = s:sub(i + 1, i + 1)
        if e == "u" then
          local cp = tonumber(s:sub(i + 2, i + 5), 16)
          i = i + 6
          if cp >= 0xD800 and cp <= 0xDBFF and s:sub(i, i + 1) == "\\u" then
            local lo = tonumber(s:sub(i + 2, i + 5), 16)
            cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
            i = i + 6
          end
          if cp < 0x80 then out[#out + 1] = string.char(cp)
          elseif cp < 0x800 then
            out[#out + 1] = string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64)
          elseif cp < 0x10000 then
            out[#out + 1] = string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
          else
            out[#out + 1] = string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
              0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
          end
        else
          local map = { b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }
          out[#out + 1] = map[e] or e
          i = i + 2
        end
      else
        local j = s:find('["\\]', i)
        out[#out + 1] = s:sub(i, j - 1)
        i = j
      end
    end
    return table.concat(out)
  end
  function value()
    ws()
    local c = s:sub(i, i)
    if c == "{" then
      local obj = {}
      i = i + 1; ws()
      if s:sub(i, i) == "}" then i = i + 1; return { object = obj } end
      while true do
        ws()
        local k = str()
        ws(); assert(s:sub(i, i) == ":"); i = i + 1
        obj[k] = value()
        ws()
        local d = s:sub(i, i); i = i + 1
        if d == "}" then return { object = obj } end
        assert(d == ",", "bad JSON near " .. i)
      end
    elseif c == "[" then
      local arr = {}
      i = i + 1; ws()
      if s:sub(i, i) == "]" then i = i + 1; return { array = arr } end
      while true do
        arr[#arr + 1] = value()
        ws()
        local d = s:sub(i, i); i = i + 1
        if d == "]" then return { array = arr } end
        assert(d == ",", "bad JSON near " .. i)
      end
    elseif c == '"' then
      return str()
    elseif s:sub(i, i + 3) == "true" then i = i + 4; return true
    elseif s:sub(i, i + 4) == "false" then i = i + 5; return false
    elseif s:sub(i, i + 3) == "null" then i = i + 4; return M.NULL
    else
      local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", i)
      i = i + #num
      if num:find("[.eE]") then return { float = num } end
      return { int = num }
    end
  end
  return value
end

function M.reference_json(s)
  return parser(s)()
end

-- Compares a decoded Lua value with a reference value; returns nil when
-- they match, else a message with the path of the first difference.
function M.diff(got, ref, path)
  path = path or "$"
  local cjson_null = require("cjson").null
  if type(ref) == "string" or type(ref) == "boolean" then
    if got ~= ref then return path .. ": expected " .. tostring(ref) .. ", got " .. tostring(got) end
  elseif ref == M.NULL then
    if got ~= cjson_null then return path .. ": expected null, got " .. tostring(got) end
  elseif ref.int or ref.float then
    if type(got) ~= "number" then return path .. ": expected a number, got " .. type(got) end
    if got ~= tonumber(ref.int or ref.float) then
      return path .. ": expected " .. (ref.int or ref.float) .. ", got " .. tostring(got)
    end
    if M.HAS_INTEGERS then
      local want = ref.int and "integer" or "float"
      -- Integer literals beyond 2^53 cannot survive a double decoder.
      if ref.int and #ref.int > 15 then want = math.type(got) end
      if math.type(got) ~= want then
        return path .. ": expected " .. want .. " " .. (ref.int or ref.float) .. ", got " .. math.type(got)
      end
    end
  elseif ref.array then
    if type(got) ~= "table" then return path .. ": expected an array, got " .. type(got) end
    local n = 0
    for _ in pairs(got) do n = n + 1 end
    if n ~= #ref.array or #got ~= #ref.array then
      return path .. ": expected " .. #ref.array .. " items, got " .. n
    end
    for k = 1, #ref.array do
      local d = M.diff(got[k], ref.array[k], path .. "[" .. k .. "]")
      if d then return d end
    end
  elseif ref.object then
    if type(got) ~= "table" then return path .. ": expected an object, got " .. type(got) end
    for k, v in pairs(ref.object) do
      local d = M.diff(got[k], v, path .. "." .. k)
      if d then return d end
    end
    for k in pairs(got) do
      if ref.object[k] == nil then return path .. ": unexpected key " .. tostring(k) end
    end
  end
  return nil
end

-- How many requests the portal logged for `method` ("batch", "oauth.token", ...).
function M.count_requests(portal, method)
  local n = 0
  for _, r in ipairs(portal:requests()) do
    if r.method == method then n = n + 1 end
  end
  return n
end

-- How many of the portal's requests got each HTTP status: { ["200"] = n, ... }.
function M.statuses(portal)
  local count = {}
  for _, r in ipairs(portal:requests()) do
    local s = string.format("%d", r.status)
    count[s] = (count[s] or 0) + 1
  end
  return count
end

-- { from, from + 1, ..., to }
function M.ids(from, to)
  local t = {}
  for i = from, to do t[#t + 1] = i end
  return t
end

return M
