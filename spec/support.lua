-- Shared pieces for the specs: one fake portal per spec file, a way to run
-- our commands, and a reference JSON reader that keeps what the client's
-- decoder must keep (integer vs float literals, null, [] vs {}), written
-- independently of cjson so the two can disagree.

local M = {}

M.LUA = os.getenv("LUA") or "lua5.4"
M.LUA_VERSION = os.getenv("LUA_VERSION") or (_VERSION:match("%d+%.%d+"))
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

-- Runs a shell command; returns stdout, stderr and the exit status.
function M.run(cmd, env)
  local out, err = os.tmpname(), os.tmpname()
  local prefix = ""
  for k, v in pairs(env or {}) do
    prefix = prefix .. k .. "='" .. tostring(v):gsub("'", "'\\''") .. "' "
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

function M.read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
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

return M
