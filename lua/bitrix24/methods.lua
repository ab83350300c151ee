-- Parameter checks for the methods the client knows, run before anything
-- is sent. A bad parameter gives nil and a message naming it (the public
-- functions raise it); a value the API would silently misread
-- (IS_PRIMARY = true stored as "not primary") is converted to what the
-- API expects.

local errors = require "bitrix24.errors"

local M = {}

-- %q writes a newline as "\" and a real newline: an error message must
-- stay one line (it ends up in logs), so write it as \n.
local function quote(s)
  return (string.format("%q", s):gsub("\\\n", "\\n"))
end

local function describe(v)
  if type(v) == "string" then return quote(v) end
  return tostring(v) .. " (" .. type(v) .. ")"
end

local fail = errors.message

-- The checks below read through __index, and their copies through pairs
-- (__pairs), while the encoders read raw keys: a table with a metatable
-- could pass a check and be sent as something else. The encoders refuse
-- such tables anywhere; the tables read here are refused before reading,
-- because a converted copy would no longer carry the metatable.
-- Each check returns its value (true when it has none), or nil and why.
local function plain(method, name, t)
  if type(t) == "table" and getmetatable(t) ~= nil then
    return nil, fail("%s: %s has a metatable; params must be plain tables", method, name)
  end
  return true
end

-- Batch commands may hold references to earlier results
-- ($result[cmd][0][ID]) wherever a value goes; the server fills them in.
-- refs says whether they are allowed (in a batch) or not (a single call).
local function is_reference(v, refs)
  return refs and type(v) == "string" and v:match("^%$%a+%[.*%]$") ~= nil
end

-- Integers as Lua numbers without a fraction, or strings of digits
-- (Bitrix24 reads ids with intval, and ids often arrive as strings).
local function integer_value(v, refs)
  if is_reference(v, refs) then return 1 end
  if type(v) == "number" then
    if v == math.floor(v) and v > -2^53 and v < 2^53 then return v end
  elseif type(v) == "string" and v:match("^%-?%d+$") and #v <= 15 then
    return tonumber(v)
  end
  return nil
end

local function check_positive(method, name, v, refs)
  local n = integer_value(v, refs)
  if not n or n <= 0 then
    return nil, fail("%s: %s must be a positive integer, got %s", method, name, describe(v))
  end
  return n
end

local function check_id(method, params, refs)
  local id = params.id
  local name = "params.id"
  if id == nil and params.ID ~= nil then id, name = params.ID, "params.ID" end
  return check_positive(method, name, id, refs)
end

-- Checks one binding ({CONTACT_ID, SORT, IS_PRIMARY}); returns it, or a
-- converted copy when IS_PRIMARY was a boolean.
local function check_binding(method, name, b, refs)
  if type(b) ~= "table" then
    return nil, fail("%s: %s must be a table, got %s", method, name, describe(b))
  end
  local ok, why = plain(method, name, b)
  if ok then ok, why = check_positive(method, name .. ".CONTACT_ID", b.CONTACT_ID, refs) end
  if not ok then return nil, why end
  if b.SORT ~= nil and not integer_value(b.SORT, refs) then
    return nil, fail("%s: %s.SORT must be an integer, got %s", method, name, describe(b.SORT))
  end
  local p = b.IS_PRIMARY
  if type(p) == "boolean" then
    local copy = {}
    for k, v in pairs(b) do copy[k] = v end
    copy.IS_PRIMARY = p and "Y" or "N"
    return copy
  elseif p ~= nil and p ~= "Y" and p ~= "N" and not is_reference(p, refs) then
    return nil, fail('%s: %s.IS_PRIMARY must be "Y", "N" or a boolean, got %s', method, name, describe(p))
  end
  return b
end

local function with(params, key, value)
  if params[key] == value then return params end
  local copy = {}
  for k, v in pairs(params) do copy[k] = v end
  copy[key] = value
  return copy
end

local function is_array(t)
  local n = 0
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k ~= math.floor(k) then return false end
    n = n + 1
  end
  return n == #t
end

-- method -> function(method, params, refs) -> params to send | nil, why
local check = {}

check["crm.lead.contact.fields"] = function(_, params) return params end

check["crm.lead.contact.items.get"] = function(method, params, refs)
  local ok, why = check_id(method, params, refs)
  if not ok then return nil, why end
  return params
end

check["crm.lead.contact.items.delete"] = check["crm.lead.contact.items.get"]

check["crm.lead.contact.add"] = function(method, params, refs)
  local ok, why = check_id(method, params, refs)
  if not ok then return nil, why end
  local fields
  fields, why = check_binding(method, "params.fields", params.fields, refs)
  if not fields then return nil, why end
  return with(params, "fields", fields)
end

check["crm.lead.contact.delete"] = function(method, params, refs)
  local ok, why = check_id(method, params, refs)
  if not ok then return nil, why end
  local fields = params.fields
  if type(fields) ~= "table" then
    return nil, fail("%s: params.fields must be a table, got %s", method, describe(fields))
  end
  ok, why = check_positive(method, "params.fields.CONTACT_ID", fields.CONTACT_ID, refs)
  if not ok then return nil, why end
  return params
end

check["crm.lead.contact.items.set"] = function(method, params, refs)
  local ok, why = check_id(method, params, refs)
  if ok then ok, why = plain(method, "params.items", params.items) end
  if not ok then return nil, why end
  local items = params.items
  if type(items) ~= "table" or not is_array(items) then
    return nil, fail("%s: params.items must be an array of bindings, got %s", method, describe(items))
  end
  local out, changed = {}, false
  for i = 1, #items do
    out[i], why = check_binding(method, "params.items[" .. i .. "]", items[i], refs)
    if not out[i] then return nil, why end
    changed = changed or out[i] ~= items[i]
  end
  return changed and with(params, "items", out) or params
end

-- Names already checked -> their lower case (Bitrix24 ignores case), so a
-- loop of calls does not match patterns and lower strings each time. A
-- program inventing names without end only empties it now and then.
local names, named = {}, 0

-- Bitrix24's method names are a few dozen bytes; a longer one is a bug
-- (or data passed in the wrong argument), not a method.
M.MAX_NAME = 255
local SHOWN = 40

-- A bad name as an error may show it: only what comes before the first
-- byte a name cannot hold, and at most SHOWN bytes. A webhook URL passed as
-- the name then shows as "https", never with its secret code.
local function shown_name(method)
  local ok = method:match("^[%w_.]*")
  local cut = method:sub(#ok + 1, #ok + 1)
  local text = quote(ok:sub(1, SHOWN)) .. ((#ok > SHOWN or cut ~= "") and "..." or "")
  if cut == "" then return text end
  return string.format("%s (byte %d is %s)", text, #ok + 1,
    cut:match("^[%w%p ]$") and quote(cut) or string.format("\\%d", cut:byte()))
end

-- A REST method name: letters, digits, "_" and single dots between them.
-- Anything else could change the URL the call goes to. Returns the name
-- in lower case, or nil and why.
function M.check_name(method)
  local lower = names[method]
  if lower then return lower end
  if type(method) ~= "string" then
    return nil, fail("method must be a non-empty string of letters, digits, '_' and '.', got %s", type(method))
  end
  if #method > M.MAX_NAME then
    return nil, fail("method must be at most %d bytes, got %d bytes starting %s", M.MAX_NAME, #method,
      quote(method:sub(1, SHOWN)))
  end
  if not method:match("^[%w_]+$") and not method:match("^[%w_][%w_.]*[%w_]$")
      or method:find("..", 1, true) then
    return nil, fail("method must be a non-empty string of letters, digits, '_' and '.', got %s",
      shown_name(method))
  end
  if named >= 1000 then names, named = {}, 0 end
  lower = method:lower()
  names[method], named = lower, named + 1
  return lower
end

-- Returns the params to send (the caller's table, or a converted copy),
-- or nil and why. refs: allow batch references in place of values.
function M.validate(method, params, refs)
  local f = check[names[method] or method:lower()]
  if not f then return params end
  local ok, why = plain(method, "params", params)
  if not ok then return nil, why end
  return f(method, params, refs or false)
end

function M.known(method)
  return check[names[method] or method:lower()] ~= nil
end

return M
