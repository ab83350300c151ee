-- The b24 command: call one REST method from the shell.
--
--   b24 METHOD [key=value ...] [--json JSON|@FILE|-] [--time]
--
-- key=value pairs use Bitrix24's PHP-style keys (fields[CONTACT_ID]=5,
-- items[0][SORT]=10); values made only of digits are sent as integers.
-- The result is printed as JSON on stdout; an error goes to stderr and
-- the exit status is 1 (2 for a usage error).

local bitrix24 = require "bitrix24"
local core = require "bitrix24.core"
local json = require "bitrix24.fake.json"

local M = {}

local USAGE = [[
usage: b24 METHOD [key=value ...] [--json JSON|@FILE|-] [--time]

Calls a Bitrix24 REST method and prints its result as JSON.
Credentials come from BITRIX24_WEBHOOK_URL (or the BITRIX24_OAUTH_* variables).
  key=value       a parameter; PHP-style keys: fields[CONTACT_ID]=5, items[0][SORT]=10
  --json JSON     parameters as a JSON object; @FILE reads a file, - reads stdin
  --time          print the answer's time block to stderr
example: b24 crm.lead.contact.items.get id=1
]]

local function integer_or_string(v)
  if v:match("^%-?%d+$") and #v <= 15 then
    return math.tointeger and math.tointeger(tonumber(v)) or tonumber(v)
  end
  return v
end

-- "fields[CONTACT_ID]" -> { "fields", "CONTACT_ID" }; numeric parts index
-- arrays, 0-based as in Bitrix24's own examples.
local function set_param(params, key, value)
  local name, rest = key:match("^([^%[%]]+)(.*)$")
  if not name then return nil, "bad parameter name: " .. key end
  local path = { name }
  for part in rest:gmatch("%[([^%[%]]*)%]") do path[#path + 1] = part end
  if rest:gsub("%[[^%[%]]*%]", "") ~= "" then return nil, "bad parameter name: " .. key end
  local t = params
  for i = 1, #path do
    local k = path[i]
    if i > 1 and k:match("^%d+$") then k = tonumber(k) + 1 end
    if k == "" then k = #t + 1 end
    if i == #path then
      t[k] = integer_or_string(value)
    else
      if type(t[k]) ~= "table" then t[k] = {} end
      t = t[k]
    end
  end
  return true
end

local function read_json(spec)
  local text
  if spec == "-" then
    text = io.read("*a")
  elseif spec:sub(1, 1) == "@" then
    local f, err = io.open(spec:sub(2), "rb")
    if not f then return nil, err end
    text = f:read("*a")
    f:close()
  else
    text = spec
  end
  local v, err = core.json_decode(text)
  if type(v) ~= "table" then return nil, "--json: not a JSON object: " .. tostring(err) end
  return v
end

-- Returns the exit status; out/errout are files (io.stdout/io.stderr).
function M.main(args, out, errout)
  out, errout = out or io.stdout, errout or io.stderr
  local method, params, show_time = nil, {}, false
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "-h" or a == "--help" then
      out:write(USAGE)
      return 0
    elseif a == "--time" then
      show_time = true
    elseif a == "--json" then
      i = i + 1
      if not args[i] then errout:write("b24: --json needs a value\n"); return 2 end
      local v, err = read_json(args[i])
      if not v then errout:write("b24: ", err, "\n"); return 2 end
      for k, val in pairs(v) do params[k] = val end
    elseif a:sub(1, 1) == "-" then
      errout:write("b24: unknown option ", a, "\n", USAGE)
      return 2
    elseif not method then
      method = a
    else
      local key, value = a:match("^([^=]+)=(.*)$")
      if not key then errout:write("b24: expected key=value, got ", a, "\n"); return 2 end
      local ok, err = set_param(params, key, value)
      if not ok then errout:write("b24: ", err, "\n"); return 2 end
    end
    i = i + 1
  end
  if not method then errout:write(USAGE); return 2 end

  local client, err = bitrix24.from_env()
  if not client then errout:write("b24: ", tostring(err), "\n"); return 2 end
  local ok, result, meta
  ok, result, err, meta = pcall(client.call, client, method, params)
  client:close()
  if not ok then
    errout:write("b24: ", tostring(result):gsub("^.-:%d+: ", ""), "\n")
    return 2
  end
  if err then
    errout:write(tostring(err), "\n")
    return 1
  end
  out:write(json.encode(result), "\n")
  if show_time and meta and meta.time then
    errout:write("time: ", json.encode(meta.time), "\n")
  end
  return 0
end

return M
