-- Parsing the body of an event Bitrix24 POSTs to a handler (FACTS §12.1):
-- application/x-www-form-urlencoded with PHP-style keys
-- (`data[FIELDS][ID]=5&auth[member_id]=...`), or JSON.
--
-- Plain Lua (5.1-5.4, LuaJIT), for any HTTP server. What it does with the
-- form, and why:
--   * `+` is a space and `%XX` a byte, as PHP's urldecode; a `%` not
--     followed by two hex digits is an error (Bitrix24 never sends one, so
--     such a body is not an event).
--   * `a[b][c]=v` nests tables; `a[]=v` appends to a Lua array (1, 2, ...);
--     explicit keys stay strings as they came (`a[0]` is the key "0").
--   * A key given twice: the last one wins, as in PHP (a later `a=1` also
--     replaces an earlier `a[b]=2`, and the other way round).
--   * An empty segment (`a=1&&b=2`) is skipped; a pair with no `=` has the
--     value "". A key that is empty or whose brackets do not close is an
--     error, where PHP would drop it or mangle it silently.
-- Limits (each an error, never a silent cut like get_post_args' 100
-- arguments): max_size bytes of body, max_fields pairs, max_depth levels
-- of nesting (`a[b][c]` is depth 3). A JSON body (Content-Type
-- application/json) must be an object and is held to max_size and
-- max_depth; its values keep their JSON types.

local cjson = require "cjson"

local M = {}

M.DEFAULTS = { max_size = 256 * 1024, max_fields = 1000, max_depth = 32 }

local function limits(opts)
  local out = {}
  for k, v in pairs(M.DEFAULTS) do
    local given = opts and opts[k]
    if given ~= nil and (type(given) ~= "number" or given < 1) then
      error("bitrix24: events.parse: opts." .. k .. " must be a positive number", 3)
    end
    out[k] = given or v
  end
  return out
end

local function decode(s)
  for pos in s:gmatch("()%%") do
    if not s:sub(pos + 1, pos + 2):match("^%x%x$") then return nil end
  end
  s = s:gsub("%+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- "data[FIELDS][ID]" -> { "data", "FIELDS", "ID" }; "" marks a `[]`.
local function split_key(key)
  local base, rest = key:match("^([^%[]*)(.*)$")
  if base == "" then return nil, "a key with no name" end
  local path, pos = { base }, 1
  while pos <= #rest do
    local seg, after = rest:match("^%[([^%]]*)%]()", pos)
    if not seg then return nil, "a key whose brackets do not close" end
    path[#path + 1] = seg
    pos = after
  end
  return path
end

local function set_path(root, path, value)
  local t = root
  for i = 1, #path - 1 do
    local k = path[i]
    if k == "" then k = #t + 1 end
    local child = t[k]
    if type(child) ~= "table" then
      child = {}
      t[k] = child
    end
    t = child
  end
  local k = path[#path]
  if k == "" then k = #t + 1 end
  t[k] = value
end

local function parse_form(body, lim)
  local out, fields = {}, 0
  for pair in body:gmatch("[^&]+") do
    fields = fields + 1
    if fields > lim.max_fields then
      return nil, "more than " .. lim.max_fields .. " fields (opts.max_fields)"
    end
    local raw_key, raw_value = pair:match("^([^=]*)=?(.*)$")
    local key, value = decode(raw_key), decode(raw_value)
    if not key or not value then return nil, "field " .. fields .. " has a bad %-escape" end
    local path, why = split_key(key)
    if not path then return nil, "field " .. fields .. " has " .. why end
    if #path > lim.max_depth then
      return nil, "field " .. fields .. " is nested deeper than " .. lim.max_depth .. " (opts.max_depth)"
    end
    set_path(out, path, value)
  end
  return out
end

local json = cjson.new()

local function parse_json(body, lim)
  if not body:match("^%s*{") then return nil, "the JSON body is not an object" end
  json.decode_max_depth(lim.max_depth)
  local ok, t = pcall(json.decode, body)
  if not ok then return nil, "not valid JSON (or nested deeper than " .. lim.max_depth .. ")" end
  if type(t) ~= "table" then return nil, "the JSON body is not an object" end
  return t
end

--- parse(body, content_type, opts) -> event table | nil, error message.
--- content_type: the request's Content-Type (nil means a form, as
--- Bitrix24 sends); opts: max_size, max_fields, max_depth.
function M.parse(body, content_type, opts)
  if type(body) ~= "string" then
    error("bitrix24: events.parse: body must be a string, got " .. type(body), 2)
  end
  if content_type ~= nil and type(content_type) ~= "string" then
    error("bitrix24: events.parse: content_type must be a string or nil, got " .. type(content_type), 2)
  end
  local lim = limits(opts)
  if #body > lim.max_size then
    return nil, "the body is larger than " .. lim.max_size .. " bytes (opts.max_size)"
  end
  local mime = (content_type or "application/x-www-form-urlencoded"):match("^%s*([^;%s]*)"):lower()
  if mime == "application/x-www-form-urlencoded" then return parse_form(body, lim) end
  if mime == "application/json" then return parse_json(body, lim) end
  return nil, "unsupported content type " .. mime .. " (a form or JSON is expected)"
end

return M
