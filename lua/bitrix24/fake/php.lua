-- PHP semantics the fake portal needs to read requests as Bitrix24 does:
-- intval(), truthiness, (string) of a number, and parse_str() of a query or
-- form body merged with a JSON body (FACTS §2).

local json = require "bitrix24.fake.json"

local omap, set, php_pairs, php_key = json.omap, json.set, json.php_pairs, json.php_key

local php = {}

-- PHP intval(): leading integer of a string, truncation of a number.
function php.intval(v)
  local t = type(v)
  if t == "number" then
    if v ~= v then return 0 end
    return json.integral(v >= 0 and math.floor(v) or math.ceil(v))
  elseif t == "string" then
    local digits = v:match("^%s*([-+]?%d+)")
    return digits and json.integral(tonumber(digits)) or 0
  elseif t == "boolean" then
    return v and 1 or 0
  elseif t == "table" then
    return next(v) ~= nil and 1 or 0
  end
  return 0
end

-- PHP truthiness: "0", "", 0, empty array, null and false are false; the
-- string "false" is true (FACTS §6, batch halt).
function php.truthy(v)
  local t = type(v)
  if t == "string" then return v ~= "" and v ~= "0" end
  if t == "number" then return v ~= 0 end
  if t == "table" then return next(v) ~= nil end
  return v == true
end

-- PHP's (string) of a number: integers in full, floats with 14 significant digits.
function php.number_text(n)
  n = json.integral(n)
  if n == math.floor(n) and math.abs(n) < 1e15 then return string.format("%d", n) end
  return string.format("%.14G", n)
end

--- Parameter parsing (FACTS §2) -------------------------------------------------

local function url_decode(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- Next integer key for PHP's `a[]=` (max integer key + 1, or 0).
local function next_index(t)
  local n = -1
  for k in pairs(t) do
    if type(k) == "number" and k > n then n = k end
  end
  return json.integral(n + 1)
end

-- Store `value` under a PHP-style key like `fields[PHONE][0][VALUE]` or `select[]`.
local function set_php_key(root, key, value)
  local base, rest = key:match("^([^%[]*)(.*)$")
  local segs, p = {}, 1
  while true do
    local seg, np = rest:match("^%[([^%]]*)%]()", p)
    if not seg then break end
    segs[#segs + 1] = seg
    p = np
  end
  if #segs == 0 then base = key end
  if base == "" then return end -- PHP drops keys without a name

  local cur, k = root, php_key(base)
  for _, seg in ipairs(segs) do
    local child = cur[k]
    if type(child) ~= "table" then
      child = omap()
      set(cur, k, child)
    end
    cur = child
    k = seg == "" and next_index(cur) or php_key(seg)
  end
  set(cur, k, value)
end

-- Parse `a=1&b[c]=2` into an ordered map (PHP parse_str).
function php.parse_form(s, into)
  into = into or omap()
  for pair in (s or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    set_php_key(into, url_decode(k), url_decode(v))
  end
  return into
end

-- Body params. Invalid JSON counts as an empty body (FACTS §2 [src]).
local function parse_body(req)
  local body = req.body or ""
  if body == "" then return omap() end
  local ctype = ((req.headers or {})["content-type"] or ""):lower()
  if ctype:find("application/json", 1, true) then
    local v = json.decode(body)
    return type(v) == "table" and v or omap()
  elseif ctype:find("application/x-www-form-urlencoded", 1, true) then
    return php.parse_form(body)
  end
  return omap() -- multipart/form-data is not emulated
end

-- Query string merged with the body; body keys win (FACTS §2 [src]).
function php.request_params(req)
  local params = php.parse_form(req.query or "")
  for _, kv in ipairs(php_pairs(parse_body(req))) do
    set(params, kv[1], kv[2])
  end
  return params
end

return php
