-- JSON for the fake Bitrix24 portal, emulating PHP's json_encode / json_decode.
--
-- Why not plain cjson: PHP arrays are *ordered* maps. The portal must keep the
-- key order of a JSON body (a batch `cmd` object runs its commands in the
-- order given, and `$result[...]` references depend on it), and must encode
-- like PHP: an empty array is `[]`, keys 0..n-1 in order make a JSON array,
-- numeric-string keys ("0", "12") are integer keys. cjson loses object key
-- order on decode and writes empty tables as `{}`, so this module has its own
-- small decoder and encoder. Integral numbers decode as Lua integers on 5.3+.
--
-- Representation:
--   * "ordered map" (PHP array with keys): a plain Lua table registered in a
--     weak table with its key order. Create with json.omap(), write with
--     json.set(t, k, v) so the order is recorded. Decoded JSON objects are
--     ordered maps.
--   * list: a plain Lua sequence 1..n (decoded JSON arrays) -> JSON array.
--   * json.object(t): always encoded as an object, `{}` when empty.
--   * json.null: sentinel for JSON null (a function, so it is never mistaken
--     for a table, string or number).
--   * any other plain table: a sequence 1..n -> array, otherwise an object with
--     sorted keys (numbers first), unless its keys are 0..n-1 (PHP list).

local json = {}

-- An ordered map keeps its keys in insertion order in its metatable
-- (__order): one table more per map, where a weak registry would make the
-- collector's work grow with every map alive.
local FORCE_OBJECT = setmetatable({}, { __mode = "k" }) -- tables that always encode as {}

json.null = function() end

local tointeger = math.tointeger -- nil before Lua 5.3

-- Turn an integral float into an integer on 5.3+ (no-op before 5.3, where all
-- numbers are doubles and the encoder prints integral values without ".0").
local function integral(n)
  if tointeger and math.type(n) == "float" and n == math.floor(n) and n > -2^53 and n < 2^53 then
    return tointeger(n)
  end
  return n
end
json.integral = integral

--- Ordered maps -------------------------------------------------------------

function json.omap()
  return setmetatable({}, { __order = {} })
end

function json.is_omap(t)
  local mt = getmetatable(t)
  return mt ~= nil and mt.__order ~= nil
end

-- Set a key, recording its position the first time (PHP keeps the position of
-- the first write when a key is overwritten).
function json.set(t, k, v)
  local mt = getmetatable(t)
  local order = mt and mt.__order
  if order and rawget(t, k) == nil and v ~= nil then
    order[#order + 1] = k
  end
  t[k] = v
  return t
end

-- Mark a table so it encodes as an object even when empty.
function json.object(t)
  t = t or {}
  FORCE_OBJECT[t] = true
  return t
end

-- PHP turns canonical decimal strings into integer keys ("0", "-3", "12" but
-- not "012", "1.0" or "+1").
local function php_key(k)
  if type(k) == "string" and (k == "0" or k:match("^%-?[1-9]%d*$")) and #k < 16 then
    return integral(tonumber(k))
  end
  return k
end
json.php_key = php_key

local function is_sequence(t)
  local n = 0
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k ~= math.floor(k) then return false end
    n = n + 1
  end
  for i = 1, n do
    if t[i] == nil then return false end
  end
  return true
end

local function key_less(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return ta == "number" end
  if ta == "number" or ta == "string" then return a < b end
  return tostring(a) < tostring(b)
end

-- Keys of a table in PHP order, and whether the table is a Lua sequence.
-- Sequences count as PHP lists with keys 0..n-1.
function json.keys(t)
  local mt = getmetatable(t)
  local order = mt and mt.__order
  if order then
    local live
    for i, k in ipairs(order) do
      if live then
        if rawget(t, k) ~= nil then live[#live + 1] = k end
      elseif rawget(t, k) == nil then
        -- (Copied only once a key turns out gone: most maps lose none.)
        live = {}
        for j = 1, i - 1 do live[j] = order[j] end
      end
    end
    return live or order, false
  end
  if is_sequence(t) then
    local ks = {}
    for i = 1, #t do ks[i] = i end
    return ks, true
  end
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks, key_less)
  return ks, false
end

-- (key, value) pairs in PHP order with PHP keys (a Lua sequence yields 0..n-1).
function json.php_pairs(t)
  local out = {}
  if type(t) ~= "table" then return out end
  local ks, seq = json.keys(t)
  for i, k in ipairs(ks) do
    out[i] = { seq and (k - 1) or php_key(k), t[k] }
  end
  return out
end

--- Encoding ----------------------------------------------------------------

local ESCAPES = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
}

local function encode_string(s)
  -- (Most strings need no escape: a large export encodes thousands.)
  if not s:find('[%c"\\]') then return '"' .. s .. '"' end
  return '"' .. s:gsub('[%c"\\]', function(c)
    if c == "\127" then return c end -- DEL is legal in JSON; PHP leaves it
    return ESCAPES[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

-- Shortest decimal that reads back as the same double (PHP 7.1+
-- serialize_precision = -1), with ".0" on integral values like PHP.
local function encode_float(x)
  if x ~= x or x == math.huge or x == -math.huge then
    return "null" -- PHP refuses to encode these; null is the closest JSON
  end
  local s
  for p = 15, 17 do
    s = string.format("%." .. p .. "g", x)
    if tonumber(s) == x then break end
  end
  if not s:find("[%.e]") then
    s = s .. ".0"
  end
  s = s:gsub("^(%-?%d+)e", "%1.0e") -- PHP writes 1.0e+25, not 1e+25
  return s
end

local function encode_number(x)
  if math.type then
    if math.type(x) == "integer" then return string.format("%d", x) end
    return encode_float(x)
  end
  -- Lua 5.1/5.2/LuaJIT: every number is a double; print integral ones as integers.
  if x == math.floor(x) and x > -2^53 and x < 2^53 then
    return string.format("%.0f", x)
  end
  return encode_float(x)
end

-- A number as PHP's json_encode writes it.
json.number_text = encode_number

local encode_value

-- PHP emits a JSON array when the keys are exactly 0..n-1 in order.
local function is_php_list(keys, seq)
  if seq then return true end
  if keys[1] ~= nil and php_key(keys[1]) ~= 0 then return false end
  for i, k in ipairs(keys) do
    if php_key(k) ~= i - 1 then return false end
  end
  return true
end

local function encode_table(t, depth, out)
  if depth > 200 then error("json: nesting too deep (cycle?)") end
  local keys, seq = json.keys(t)
  if not FORCE_OBJECT[t] and is_php_list(keys, seq) then
    out[#out + 1] = "["
    for i, k in ipairs(keys) do
      if i > 1 then out[#out + 1] = "," end
      encode_value(t[k], depth + 1, out)
    end
    out[#out + 1] = "]"
    return
  end
  out[#out + 1] = "{"
  for i, k in ipairs(keys) do
    if i > 1 then out[#out + 1] = "," end
    local ks = type(k) == "number" and encode_number(k):gsub("%.0$", "") or tostring(k)
    out[#out + 1] = encode_string(ks)
    out[#out + 1] = ":"
    encode_value(t[k], depth + 1, out)
  end
  out[#out + 1] = "}"
end

encode_value = function(v, depth, out)
  local tv = type(v)
  if tv == "table" then
    encode_table(v, depth, out)
  elseif tv == "string" then
    out[#out + 1] = encode_string(v)
  elseif tv == "number" then
    out[#out + 1] = encode_number(v)
  elseif tv == "boolean" then
    out[#out + 1] = v and "true" or "false"
  else
    out[#out + 1] = "null" -- nil, json.null, anything unencodable
  end
end

function json.encode(v)
  local out = {}
  encode_value(v, 0, out)
  return table.concat(out)
end

--- Decoding ----------------------------------------------------------------

local UNESCAPE = {
  ['"'] = '"', ["\\"] = "\\", ["/"] = "/",
  b = "\b", f = "\f", n = "\n", r = "\r", t = "\t",
}

local function utf8_char(cp)
  local floor = math.floor
  if cp < 0x80 then
    return string.char(cp)
  elseif cp < 0x800 then
    return string.char(0xC0 + floor(cp / 64), 0x80 + cp % 64)
  elseif cp < 0x10000 then
    return string.char(0xE0 + floor(cp / 4096), 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return string.char(0xF0 + floor(cp / 262144), 0x80 + floor(cp / 4096) % 64,
    0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
end

local Decoder = {}
Decoder.__index = Decoder

function Decoder:fail(msg)
  error({ json_error = msg .. " at byte " .. self.pos }, 0)
end

function Decoder:skip_ws()
  self.pos = self.s:find("[^ \t\r\n]", self.pos) or (#self.s + 1)
end

function Decoder:string()
  local s, buf, i = self.s, {}, self.pos + 1
  while true do
    local j = s:find('[%c"\\]', i)
    if not j then self:fail("unterminated string") end
    local c = s:sub(j, j)
    buf[#buf + 1] = s:sub(i, j - 1)
    if c == '"' then
      self.pos = j + 1
      return table.concat(buf)
    elseif c == "\127" then
      buf[#buf + 1] = c
      i = j + 1
    elseif c ~= "\\" then
      self:fail("control character in string")
    else
      local e = s:sub(j + 1, j + 1)
      if e == "u" then
        local hex = s:match("^%x%x%x%x", j + 2)
        if not hex then self:fail("bad \\u escape") end
        local cp = tonumber(hex, 16)
        i = j + 6
        local lo = cp >= 0xD800 and cp <= 0xDBFF and s:match("^\\u([dD][c-fC-F]%x%x)", i)
        if lo then -- surrogate pair
          cp = 0x10000 + (cp - 0xD800) * 0x400 + (tonumber(lo, 16) - 0xDC00)
          i = i + 6
        end
        buf[#buf + 1] = utf8_char(cp)
      elseif UNESCAPE[e] then
        buf[#buf + 1] = UNESCAPE[e]
        i = j + 2
      else
        self:fail("bad escape")
      end
    end
  end
end

function Decoder:number()
  local s = self.s
  local num = s:match("^-?%d+", self.pos)
  if not num then self:fail("unexpected character") end
  local p = self.pos + #num
  local frac = s:match("^%.%d+", p)
  if frac then num, p = num .. frac, p + #frac end
  local exp = s:match("^[eE][-+]?%d+", p)
  if exp then num, p = num .. exp, p + #exp end
  self.pos = p
  return integral(tonumber(num))
end

function Decoder:value(depth)
  if depth > 512 then self:fail("nesting too deep") end
  self:skip_ws()
  local s, pos = self.s, self.pos
  local c = s:sub(pos, pos)
  if c == "{" then
    return self:object(depth)
  elseif c == "[" then
    return self:array(depth)
  elseif c == '"' then
    return self:string()
  elseif s:sub(pos, pos + 3) == "true" then
    self.pos = pos + 4
    return true
  elseif s:sub(pos, pos + 4) == "false" then
    self.pos = pos + 5
    return false
  elseif s:sub(pos, pos + 3) == "null" then
    self.pos = pos + 4
    return json.null
  end
  return self:number()
end

function Decoder:object(depth)
  local obj = json.omap()
  self.pos = self.pos + 1
  self:skip_ws()
  if self.s:sub(self.pos, self.pos) == "}" then
    self.pos = self.pos + 1
    return obj
  end
  while true do
    self:skip_ws()
    if self.s:sub(self.pos, self.pos) ~= '"' then self:fail("expected key") end
    local k = self:string()
    self:skip_ws()
    if self.s:sub(self.pos, self.pos) ~= ":" then self:fail("expected ':'") end
    self.pos = self.pos + 1
    json.set(obj, k, self:value(depth + 1))
    self:skip_ws()
    local c = self.s:sub(self.pos, self.pos)
    self.pos = self.pos + 1
    if c == "}" then return obj end
    if c ~= "," then self:fail("expected ',' or '}'") end
  end
end

function Decoder:array(depth)
  local arr = {}
  self.pos = self.pos + 1
  self:skip_ws()
  if self.s:sub(self.pos, self.pos) == "]" then
    self.pos = self.pos + 1
    return arr
  end
  while true do
    arr[#arr + 1] = self:value(depth + 1)
    self:skip_ws()
    local c = self.s:sub(self.pos, self.pos)
    self.pos = self.pos + 1
    if c == "]" then return arr end
    if c ~= "," then self:fail("expected ',' or ']'") end
  end
end

-- Returns the value, or nil and an error message for invalid JSON.
function json.decode(s)
  if type(s) ~= "string" then return nil, "not a string" end
  local d = setmetatable({ s = s, pos = 1 }, Decoder)
  local ok, v = pcall(function()
    local v = d:value(0)
    d:skip_ws()
    if d.pos <= #s then d:fail("trailing garbage") end
    return v
  end)
  if ok then return v end
  if type(v) == "table" and v.json_error then return nil, v.json_error end
  error(v, 0)
end

return json
