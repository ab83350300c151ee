-- Logic of a fake Bitrix24 portal (REST v1), for testing the client.
--
-- No server code here: a host (nginx/OpenResty, or a test) turns each HTTP
-- request into a plain table and calls portal:handle(req), which returns
-- { status, headers, body, delay, fault } (see Portal:handle below);
-- behaviour follows the project's notes on the Bitrix24 docs, FACTS.md
-- (kept outside the repository; sections are cited as "FACTS §n"; "[src]"
-- marks behaviour FACTS took from the module source, which wins over the
-- docs where they disagree).
--
-- Pipeline of a REST request (webhook or OAuth):
--   parse params -> auth -> fault injection -> leaky bucket -> method lookup
--   -> operating-time limit -> handler -> time block -> log.
-- Faults are checked after auth (so an unauthenticated client never sees
-- them) and before the rate limiter (so an injected failure does not use up
-- the bucket). Every REST and token-endpoint request is logged, rejected
-- ones included; /_fake/ control requests are not.

local json = require "bitrix24.fake.json"
local default_data = require "bitrix24.fake.data"

local omap, set, php_pairs, php_key = json.omap, json.set, json.php_pairs, json.php_key

local Portal = {}
Portal.__index = Portal

local JSON_TYPE = "application/json; charset=utf-8"
local PAGE_SIZE = 50      -- list methods and batch (FACTS §6, §10)
local OP_WINDOW = 10      -- operating time: 10 one-minute buckets (FACTS §5)
local DEFAULT_COST = 0.01 -- simulated seconds of execution per call

--- Small helpers -------------------------------------------------------------

-- An ordered map from alternating key/value arguments, for bodies whose key
-- order should match the real server's.
local function obj(...)
  local t, n = omap(), select("#", ...)
  for i = 1, n, 2 do
    local k, v = select(i, ...)
    set(t, k, v)
  end
  return t
end

local function float(x)
  return x * 1.0 -- float subtype on 5.3+, so PHP-like "1.0" output; no-op before
end

-- PHP intval(): leading integer of a string, truncation of a number.
local function intval(v)
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
local function truthy(v)
  local t = type(v)
  if t == "string" then return v ~= "" and v ~= "0" end
  if t == "number" then return v ~= 0 end
  if t == "table" then return next(v) ~= nil end
  return v == true
end

local function iso_date(t)
  return os.date("!%Y-%m-%dT%H:%M:%S+00:00", math.floor(t))
end

local rng_seeded = false
local function random_string(n, alphabet)
  if not rng_seeded then
    math.randomseed(math.floor(os.time() + os.clock() * 1000000) % 2147483647)
    rng_seeded = true
  end
  alphabet = alphabet or "abcdefghijklmnopqrstuvwxyz0123456789"
  local out = {}
  for i = 1, n do
    local k = math.random(1, #alphabet)
    out[i] = alphabet:sub(k, k)
  end
  return table.concat(out)
end

local function default_clock()
  local ngx = rawget(_G, "ngx")
  if type(ngx) == "table" and ngx.now then
    return function() return ngx.now() end
  end
  local ok, socket = pcall(require, "socket")
  if ok and type(socket) == "table" and socket.gettime then
    return socket.gettime
  end
  return os.time
end

-- Options may come from cjson (floats on Lua 5.4): make integral numbers
-- integers so "/rest/1/" never becomes "/rest/1.0/".
local function norm(v)
  if type(v) == "number" then return json.integral(v) end
  return v
end

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

--- Parameter parsing (PHP semantics, FACTS §2) ---------------------------------

local function url_decode(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function url_encode(s)
  return (s:gsub("[^%w%-_%.~]", function(c) return string.format("%%%02X", c:byte()) end))
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
local function parse_form(s, into)
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
    return parse_form(body)
  end
  return omap() -- multipart/form-data is not emulated
end

-- Query string merged with the body; body keys win (FACTS §2 [src]).
local function request_params(req)
  local params = parse_form(req.query or "")
  for _, kv in ipairs(php_pairs(parse_body(req))) do
    set(params, kv[1], kv[2])
  end
  return params
end

--- Responses -------------------------------------------------------------------

local function error_body(code, text)
  return obj("error", code, "error_description", text)
end

local function json_response(status, body)
  return {
    status = status,
    headers = { ["Content-Type"] = JSON_TYPE },
    body = json.encode(body),
    error_code = type(body) == "table" and type(body.error) == "string" and body.error or nil,
  }
end

-- Outcome of a method handler: success or failure, not yet encoded.
local function ok(result, total, nxt)
  return { result = result, total = total, next = nxt }
end

local function fail(status, code, text)
  return { failed = true, status = status, error = code, error_description = text }
end

local function error_response(f)
  return json_response(f.status, error_body(f.error, f.error_description))
end

local ERR = {
  no_auth = function() return fail(401, "NO_AUTH_FOUND", "Wrong authorization data") end,
  invalid_token = function() return fail(401, "invalid_token", "The access token provided is invalid.") end,
  expired_token = function() return fail(401, "expired_token", "The access token provided has expired.") end,
  not_found_method = function() return fail(404, "ERROR_METHOD_NOT_FOUND", "Method not found!") end,
  query_limit = function() return fail(503, "QUERY_LIMIT_EXCEEDED", "Too many requests") end,
  op_limit = function()
    return fail(429, "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit.")
  end,
  access_denied = function() return fail(403, "ACCESS_DENIED", "Access denied!") end,
  owner_invalid = function() return fail(400, "", "The parameter ownerEntityID is invalid or not defined.") end,
  not_found = function() return fail(400, "", "Not found.") end,
}

local NGINX_502 = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
  .. "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"

--- Data ------------------------------------------------------------------------

-- Copy one lead/contact record out of the data set (Lua or decoded JSON).
local function load_record(src, with_contacts)
  local rec = { fields = {}, access = src.access or "write", contacts = {} }
  for k, v in pairs(src) do
    if k ~= "access" and k ~= "contacts" then rec.fields[k] = v end
  end
  rec.fields.ID = intval(src.ID)
  if with_contacts then
    for _, kv in ipairs(php_pairs(src.contacts)) do
      local b = kv[2]
      rec.contacts[#rec.contacts + 1] = {
        CONTACT_ID = intval(b.CONTACT_ID),
        SORT = b.SORT ~= nil and intval(b.SORT) or 10,
        ROLE_ID = intval(b.ROLE_ID),
        IS_PRIMARY = b.IS_PRIMARY == "Y" and "Y" or "N",
      }
    end
  end
  return rec
end

local function load_table(list, with_contacts)
  local by_id, ids = {}, {}
  for _, kv in ipairs(php_pairs(list)) do
    local rec = load_record(kv[2], with_contacts)
    local id = rec.fields.ID
    if id > 0 and not by_id[id] then
      by_id[id] = rec
      ids[#ids + 1] = id
    end
  end
  table.sort(ids)
  return { by_id = by_id, ids = ids }
end

function Portal.load_data(path)
  local f = assert(io.open(path, "rb"))
  local text = f:read("*a")
  f:close()
  local data, err = json.decode(text)
  if type(data) ~= "table" then error("bad data file " .. path .. ": " .. tostring(err)) end
  return data
end

function Portal:load(data)
  self.leads = load_table(data.leads, true)
  self.contacts = load_table(data.contacts, false)
end

local function can_read(rec) return rec.access ~= "none" end
local function can_update(rec) return rec.access ~= "none" and rec.access ~= "read" end

--- Construction, tokens, configuration -------------------------------------------

local CONFIG_KEYS = { "rate", "burst", "op_limit", "token_ttl", "op_cost", "op_bucket" }

function Portal.new(opts)
  opts = opts or {}
  local self = setmetatable({}, Portal)
  self.initial_data = opts.data or default_data()
  self.code = opts.code or random_string(16)
  self.user_id = norm(opts.user_id) or 1
  self.client_id = opts.client_id or "local.fake0000000000"
  self.client_secret = opts.client_secret or random_string(40)
  self.member_id = random_string(32, "0123456789abcdef")
  self.clock = opts.clock or default_clock()
  local rate = opts.rate
  if rate == nil then rate = 2 end
  self.initial_cfg = {
    rate = norm(rate),
    burst = norm(opts.burst) or 50,
    op_limit = norm(opts.op_limit == nil and 480 or opts.op_limit),
    token_ttl = norm(opts.token_ttl) or 3600,
    op_cost = opts.op_cost,
    -- Seconds per operating-time bucket: 60 as in Bitrix24; tests shrink
    -- it to see a method unblock without waiting ten minutes.
    op_bucket = opts.op_bucket or 60,
  }
  self.access_tokens, self.refresh_tokens = {}, {}
  self:issue_tokens()
  self:reset()
  return self
end

-- A new access/refresh pair; the previous refresh token stops working
-- (rotation, FACTS §8). Old access tokens live on until they expire.
function Portal:issue_tokens()
  if self.refresh_token then self.refresh_tokens[self.refresh_token] = nil end
  self.access_token = random_string(32)
  self.refresh_token = random_string(32)
  self.access_tokens[self.access_token] = { issued = self.clock() }
  self.refresh_tokens[self.refresh_token] = true
end

function Portal:reset(opts)
  opts = opts or {}
  self:load(self.initial_data)
  self.log = {}
  self.faults = {}
  self.bucket = { level = 0, last = nil }
  self.op_buckets = {}
  self.cfg = copy(self.initial_cfg)
  if truthy(opts.tokens) then
    self.access_tokens, self.refresh_tokens, self.refresh_token = {}, {}, nil
    self:issue_tokens()
  end
end

function Portal:configure(t)
  for _, k in ipairs(CONFIG_KEYS) do
    local v = t[k]
    if v == json.null then v = false end
    if v ~= nil then self.cfg[k] = norm(v) end
  end
  return copy(self.cfg)
end

function Portal:expire_tokens()
  for _, tok in pairs(self.access_tokens) do tok.expired = true end
end

function Portal:info()
  return obj(
    "webhook_path", "/rest/" .. self.user_id .. "/" .. self.code .. "/",
    "code", self.code,
    "user_id", self.user_id,
    "client_id", self.client_id,
    "client_secret", self.client_secret,
    "access_token", self.access_token,
    "refresh_token", self.refresh_token,
    "member_id", self.member_id)
end

function Portal:requests()
  local out = {}
  for i, e in ipairs(self.log) do out[i] = e end
  return out
end

function Portal:stats()
  local by_status, conns, nconn = omap(), {}, 0
  for _, e in ipairs(self.log) do
    local k = tostring(e.status)
    set(by_status, k, (by_status[k] or 0) + 1)
    if e.conn ~= nil and not conns[e.conn] then
      conns[e.conn] = true
      nconn = nconn + 1
    end
  end
  return obj("requests", #self.log, "by_status", json.object(by_status), "connections", nconn)
end

--- Faults --------------------------------------------------------------------------

local FAULT_KINDS = {
  latency = true, html502 = true, truncate = true, malformed = true, reset = true,
  error500 = true, error200 = true, redirect = true, canned = true,
}

-- Register a fault. Without `method` and `pattern` it matches every method.
function Portal:fault(spec)
  if type(spec) ~= "table" or not FAULT_KINDS[spec.kind] then
    error("fault: unknown kind " .. tostring(spec and spec.kind), 0)
  end
  local f = copy(spec)
  if type(f.method) == "string" then f.method = f.method:lower() end
  if f.pattern ~= nil then
    if type(f.pattern) ~= "string" or not pcall(string.find, "", f.pattern) then
      error("fault: bad pattern", 0)
    end
  end
  if f.times ~= nil then f.times = intval(f.times) end
  self.faults[#self.faults + 1] = f
  return #self.faults
end

function Portal:clear_faults()
  self.faults = {}
end

-- First fault matching `method`; consumes one of its `times`.
function Portal:take_fault(method)
  for i, f in ipairs(self.faults) do
    local hit
    if f.method then
      hit = f.method == method
    elseif f.pattern then
      hit = method:find(f.pattern) ~= nil
    else
      hit = true
    end
    if hit then
      if f.times then
        f.times = f.times - 1
        if f.times <= 0 then table.remove(self.faults, i) end
      end
      return f
    end
  end
end

-- Answer for a fault that replaces the call (nil for kinds that let the call
-- run and damage its answer afterwards: latency, truncate, malformed).
local function fault_response(f, req, rest_tail)
  local k = f.kind
  if k == "html502" then
    return { status = f.status or 502, headers = { ["Content-Type"] = "text/html" }, body = NGINX_502 }
  elseif k == "error500" then
    local r = json_response(f.status or 500, error_body("INTERNAL_SERVER_ERROR", "Internal server error"))
    return r
  elseif k == "error200" then
    -- A handler may return an error array without throwing: HTTP 200 (FACTS §3 [src]).
    return json_response(f.status or 200, error_body(f.error or "ERROR_CORE",
      f.error_description or "Simulated error with HTTP 200"))
  elseif k == "canned" then
    local body = f.body or ""
    local ctype = f.content_type or (body:match("^%s*[%[{]") and JSON_TYPE or "text/html")
    return { status = f.status or 200, headers = { ["Content-Type"] = ctype }, body = body }
  elseif k == "redirect" then
    return { status = f.status or 302, headers = { Location = Portal.redirect_target(f, req, rest_tail) }, body = "" }
  elseif k == "reset" then
    return { status = 0, headers = {}, body = "", fault = "reset" }
  end
end

-- Where a redirect fault points: `location` as given, or, when it ends with
-- "/", that base plus the method part of the request; by default the same
-- path and query on 127.0.0.2 (a "moved portal", FACTS §1).
function Portal.redirect_target(f, req, rest_tail)
  local query = (req.query and req.query ~= "") and ("?" .. req.query) or ""
  if f.location then
    if f.location:sub(-1) == "/" then return f.location .. rest_tail .. query end
    return f.location
  end
  local scheme, port = (req.base_url or "http://127.0.0.1"):match("^(%a+)://[^:/]+(:?%d*)")
  return (scheme or "http") .. "://127.0.0.2" .. (port or "") .. req.path .. query
end

-- Damage a normal answer after the call ran.
local function apply_post_fault(f, res)
  if f.kind == "truncate" then
    res.fault = "truncate"
  elseif f.kind == "malformed" then
    res.body = res.body:sub(1, math.floor(#res.body / 2)) -- complete HTTP framing, broken JSON
  end
end

--- Limits (FACTS §5) -----------------------------------------------------------------

-- Leaky bucket: drains `rate` per second; a request that would push the level
-- over `burst` is refused and not counted.
function Portal:admit(now)
  local rate, burst = self.cfg.rate, self.cfg.burst
  if not rate or rate == 0 then return true end
  local b = self.bucket
  if b.last then b.level = math.max(0, b.level - (now - b.last) * rate) end
  b.last = now
  if b.level + 1 > burst then return false end
  b.level = b.level + 1
  return true
end

-- Seconds this method used in the last 10 one-minute buckets.
function Portal:operating(method, now)
  local buckets = self.op_buckets[method]
  if not buckets then return 0 end
  local current, sum = math.floor(now / self.cfg.op_bucket), 0
  for minute, used in pairs(buckets) do
    if minute > current - OP_WINDOW then
      sum = sum + used
    else
      buckets[minute] = nil
    end
  end
  return sum
end

function Portal:charge(method, now, seconds)
  local buckets = self.op_buckets[method] or {}
  self.op_buckets[method] = buckets
  local minute = math.floor(now / self.cfg.op_bucket)
  buckets[minute] = (buckets[minute] or 0) + seconds
end

function Portal:cost(method)
  local c = self.cfg.op_cost
  if type(c) == "number" then return c end
  if type(c) == "table" and type(c[method]) == "number" then return c[method] end
  return DEFAULT_COST
end

-- The `time` block (FACTS §3). operating_reset_at = floor(start) + 600 (the
-- window: 10 buckets of 60 s), as in every real response that has it; it is
-- given only when the method has a bucket.
local function time_block(start, finish, processing, operating, window)
  local t = obj(
    "start", float(start),
    "finish", float(finish),
    "duration", float(finish - start),
    "processing", float(processing),
    "date_start", iso_date(start),
    "date_finish", iso_date(finish))
  if operating then
    set(t, "operating_reset_at", json.integral(math.floor(start + window)))
    set(t, "operating", float(operating))
  else
    set(t, "operating", 0)
  end
  return t
end

--- crm.lead.contact.* (FACTS §7) -----------------------------------------------------

local BINDING_FIELDS = { { "SORT", "integer", false, "Sorting" }, { "IS_PRIMARY", "char", false, "Primary" },
  { "CONTACT_ID", "integer", true, "Contact" } }

local function binding_fields()
  local result = omap()
  for _, f in ipairs(BINDING_FIELDS) do
    set(result, f[1], obj("type", f[2], "isRequired", f[3], "isReadOnly", false, "isImmutable", false,
      "isMultiple", false, "isDynamic", false, "title", f[4]))
  end
  return result
end

-- Lead `id`/`ID` plus the right check. A lead that does not exist passes the
-- right check (the webhook user is an admin); callers decide what that means.
function Portal:lead_for(params, need_read, need_update)
  local raw = params.ID
  if raw == nil then raw = params.id end
  local id = intval(raw)
  if id <= 0 then return nil, ERR.owner_invalid() end
  local lead = self.leads.by_id[id]
  if lead and ((need_read and not can_read(lead)) or (need_update and not can_update(lead))) then
    return nil, ERR.access_denied()
  end
  return lead
end

-- Every contact bound or unbound must be readable (FACTS §7 [src]). The exact
-- wording of the real message is unknown; it starts with "[Contact #N]".
function Portal:check_contacts(ids)
  for _, cid in ipairs(ids) do
    local c = self.contacts.by_id[cid]
    if not c or not can_read(c) then
      return fail(400, "", "[Contact #" .. cid .. "] Read access denied or contact not found.")
    end
  end
end

-- `fields` of add/delete: an array with a positive CONTACT_ID.
local function binding_contact(params)
  local fields = params.fields
  if type(fields) ~= "table" then
    return nil, fail(400, "", "The parameter 'fields' must be array.")
  end
  local cid = intval(fields.CONTACT_ID)
  if cid <= 0 then return nil, fail(400, "", "The parameter 'fields' is not valid.") end
  return cid, nil, fields
end

local function find_binding(lead, cid)
  for i, b in ipairs(lead.contacts) do
    if b.CONTACT_ID == cid then return i end
  end
end

local function binding_json(b)
  return obj("CONTACT_ID", b.CONTACT_ID, "SORT", b.SORT, "ROLE_ID", b.ROLE_ID, "IS_PRIMARY", b.IS_PRIMARY)
end

local M = {} -- method name -> handler(self, params) returning ok(...) or fail(...)

M["crm.lead.contact.fields"] = function()
  return ok(binding_fields())
end

-- Not a list method: every binding, SORT ascending, no total/next. A lead that
-- does not exist gives [] (no existence check, FACTS §7 [src]).
M["crm.lead.contact.items.get"] = function(self, params)
  local lead, err = self:lead_for(params, true, false)
  if err then return err end
  local rows = {}
  for i, b in ipairs(lead and lead.contacts or {}) do rows[i] = { b = b, i = i } end
  table.sort(rows, function(x, y)
    if x.b.SORT ~= y.b.SORT then return x.b.SORT < y.b.SORT end
    return x.i < y.i
  end)
  local result = {}
  for i, r in ipairs(rows) do result[i] = binding_json(r.b) end
  return ok(result)
end

-- Already bound -> result false (FACTS §7 [src]). Only the string "Y" makes a
-- binding primary; a new primary demotes the others. No automatic primary is
-- chosen here (FACTS gives that rule for items.set only).
M["crm.lead.contact.add"] = function(self, params)
  local lead, err = self:lead_for(params, false, true)
  if err then return err end
  if not lead then return ERR.not_found() end
  local cid, ferr, fields = binding_contact(params)
  if ferr then return ferr end
  local cerr = self:check_contacts({ cid })
  if cerr then return cerr end
  if find_binding(lead, cid) then return ok(false) end
  local primary = fields.IS_PRIMARY == "Y"
  if primary then
    for _, b in ipairs(lead.contacts) do b.IS_PRIMARY = "N" end
  end
  lead.contacts[#lead.contacts + 1] = {
    CONTACT_ID = cid,
    SORT = fields.SORT ~= nil and intval(fields.SORT) or 10,
    ROLE_ID = 0,
    IS_PRIMARY = primary and "Y" or "N",
  }
  return ok(true)
end

-- Not bound -> result false (FACTS §7 [src]).
M["crm.lead.contact.delete"] = function(self, params)
  local lead, err = self:lead_for(params, false, true)
  if err then return err end
  if not lead then return ERR.not_found() end
  local cid, ferr = binding_contact(params)
  if ferr then return ferr end
  local cerr = self:check_contacts({ cid })
  if cerr then return cerr end
  local i = find_binding(lead, cid)
  if not i then return ok(false) end
  table.remove(lead.contacts, i)
  return ok(true)
end

-- Normalise items.set input (FACTS §7 [src]): skip items without a positive
-- CONTACT_ID (and repeats), SORT defaults to (index+1)*10, only the first "Y"
-- stays primary, and with no "Y" the first item becomes primary.
local function normalise_items(items)
  local list, seen, has_primary = {}, {}, false
  for index, kv in ipairs(php_pairs(items)) do
    local item = kv[2]
    local cid = type(item) == "table" and intval(item.CONTACT_ID) or 0
    if cid > 0 and not seen[cid] then
      seen[cid] = true
      local primary = item.IS_PRIMARY == "Y" and not has_primary
      has_primary = has_primary or primary
      list[#list + 1] = {
        CONTACT_ID = cid,
        SORT = item.SORT ~= nil and intval(item.SORT) or index * 10,
        ROLE_ID = 0,
        IS_PRIMARY = primary and "Y" or "N",
      }
    end
  end
  if not has_primary and list[1] then list[1].IS_PRIMARY = "Y" end
  return list
end

M["crm.lead.contact.items.set"] = function(self, params)
  local lead, err = self:lead_for(params, false, true)
  if err then return err end
  if not lead then return ERR.not_found() end
  if type(params.items) ~= "table" then
    return fail(400, "", "The parameter 'items' must be array.")
  end
  local list = normalise_items(params.items)
  local touched = {}
  for _, b in ipairs(list) do touched[#touched + 1] = b.CONTACT_ID end
  for _, b in ipairs(lead.contacts) do touched[#touched + 1] = b.CONTACT_ID end
  local cerr = self:check_contacts(touched)
  if cerr then return cerr end
  lead.contacts = list
  return ok(true)
end

-- Needs read and update rights; does not check that the lead exists (FACTS §7 [src]).
M["crm.lead.contact.items.delete"] = function(self, params)
  local lead, err = self:lead_for(params, true, true)
  if err then return err end
  if lead then
    local ids = {}
    for i, b in ipairs(lead.contacts) do ids[i] = b.CONTACT_ID end
    local cerr = self:check_contacts(ids)
    if cerr then return cerr end
    lead.contacts = {}
  end
  return ok(true)
end

--- crm.lead.list / crm.contact.list (FACTS §10) ------------------------------------------

local DEFAULT_SELECT = {
  lead = { "ID", "TITLE", "NAME", "LAST_NAME", "STATUS_ID" },
  contact = { "ID", "NAME", "LAST_NAME" },
}

-- Field values come out as strings, as real crm.*.list does (IDs too).
local function field_text(v)
  if v == nil or v == json.null then return json.null end
  if type(v) == "number" then return json.encode(json.integral(v)) end
  if type(v) == "boolean" then return v and "Y" or "N" end
  return v
end

local function compare(a, b)
  local na, nb = tonumber(a), tonumber(b)
  if na and nb then
    if na == nb then return 0 end
    return na < nb and -1 or 1
  end
  a, b = tostring(a), tostring(b)
  if a == b then return 0 end
  return a < b and -1 or 1
end

local function one_of(value, list)
  for _, kv in ipairs(php_pairs(list)) do
    if compare(value, kv[2]) == 0 then return true end
  end
  return false
end

-- One filter condition: "<op><FIELD>" => value.
local FILTER_OPS = {
  [""] = function(v, want) return type(want) == "table" and one_of(v, want) or compare(v, want) == 0 end,
  ["="] = function(v, want) return type(want) == "table" and one_of(v, want) or compare(v, want) == 0 end,
  ["@"] = function(v, want) return type(want) == "table" and one_of(v, want) or compare(v, want) == 0 end,
  ["!"] = function(v, want) return not (type(want) == "table" and one_of(v, want) or compare(v, want) == 0) end,
  ["!="] = function(v, want) return compare(v, want) ~= 0 end,
  [">"] = function(v, want) return compare(v, want) > 0 end,
  ["<"] = function(v, want) return compare(v, want) < 0 end,
  [">="] = function(v, want) return compare(v, want) >= 0 end,
  ["<="] = function(v, want) return compare(v, want) <= 0 end,
  ["%"] = function(v, want) return tostring(v):lower():find(tostring(want):lower(), 1, true) ~= nil end,
}

local function parse_filter(filter)
  local conds = {}
  for _, kv in ipairs(php_pairs(filter)) do
    local op, field = tostring(kv[1]):match("^([!<>=@%%]*)(.-)$")
    if FILTER_OPS[op] and field ~= "" then
      conds[#conds + 1] = { test = FILTER_OPS[op], field = field, value = kv[2] }
    end
  end
  return conds
end

local function matches(rec, conds)
  for _, c in ipairs(conds) do
    local v = rec.fields[c.field]
    if v == nil or v == json.null or not c.test(v, c.value) then return false end
  end
  return true
end

local function sort_records(rows, order)
  local keys = {}
  for _, kv in ipairs(php_pairs(order)) do
    keys[#keys + 1] = { field = tostring(kv[1]), desc = tostring(kv[2]):upper() == "DESC" }
  end
  if #keys == 0 then keys[1] = { field = "ID", desc = false } end
  table.sort(rows, function(a, b)
    for _, k in ipairs(keys) do
      local va, vb = a.fields[k.field], b.fields[k.field]
      if va ~= nil and vb ~= nil then
        local c = compare(va, vb)
        if c ~= 0 then
          if k.desc then return c > 0 end
          return c < 0
        end
      end
    end
    return a.fields.ID < b.fields.ID
  end)
end

local function select_fields(rec, select, entity)
  local names = {}
  for _, kv in ipairs(php_pairs(select)) do names[#names + 1] = tostring(kv[2]) end
  local all = #names == 0 and DEFAULT_SELECT[entity] or nil
  for _, n in ipairs(names) do
    if n == "*" then
      all = { "ID" }
      local others = {}
      for k in pairs(rec.fields) do if k ~= "ID" then others[#others + 1] = k end end
      table.sort(others)
      for _, k in ipairs(others) do all[#all + 1] = k end
    end
  end
  local row = omap()
  for _, n in ipairs(all or names) do
    if rec.fields[n] ~= nil then set(row, n, field_text(rec.fields[n])) end
  end
  return row
end

-- Pages of 50. `start` is an offset (intval); start=-1 skips the count:
-- up to 50 rows, total 0, no next (FACTS §10). (The real server may round
-- start down to a multiple of 50; values handed out in `next` are such
-- multiples anyway.)
local function list_method(entity, store_name)
  return function(self, params)
    local store = self[store_name]
    local conds = parse_filter(params.filter)
    local rows = {}
    for _, id in ipairs(store.ids) do
      local rec = store.by_id[id]
      if can_read(rec) and matches(rec, conds) then rows[#rows + 1] = rec end
    end
    sort_records(rows, params.order)
    local start = intval(params.start)
    local offset = start < 0 and 0 or start
    local result = {}
    for i = offset + 1, math.min(offset + PAGE_SIZE, #rows) do
      result[#result + 1] = select_fields(rows[i], params.select, entity)
    end
    if start < 0 then return ok(result, 0, nil) end
    local nxt = offset + PAGE_SIZE < #rows and json.integral(offset + PAGE_SIZE) or nil
    return ok(result, #rows, nxt)
  end
end

M["crm.lead.list"] = list_method("lead", "leads")
M["crm.contact.list"] = list_method("contact", "contacts")

--- Calling a method with limits and time ------------------------------------------------

-- Run one method (top-level or inside batch) at simulated time `start`.
-- Returns the outcome with `time` (success) and `finish` set.
function Portal:call(method, params, start)
  local handler = M[method]
  if not handler then return ERR.not_found_method() end
  local limit = self.cfg.op_limit -- false/nil disables the limit
  if limit and self:operating(method, start) > limit then
    return ERR.op_limit()
  end
  local out = handler(self, params)
  local cost = self:cost(method)
  self:charge(method, start, cost) -- failed calls cost time too
  out.finish = math.max(self.clock(), start + cost)
  if not out.failed then
    out.time = time_block(start, out.finish, cost, self:operating(method, start), OP_WINDOW * self.cfg.op_bucket)
  end
  return out
end

local function success_body(out)
  return obj("result", out.result, "next", out.next, "total", out.total, "time", out.time)
end

--- batch (FACTS §6) ---------------------------------------------------------------------

local REF_MAPS = { result = "result", error = "result_error", time = "result_time",
  next = "result_next", total = "result_total" }

local function ref_index(value, seg)
  if type(value) ~= "table" then return nil end
  if json.is_omap(value) then
    local v = value[seg]
    if v == nil then v = value[php_key(seg)] end
    return v
  end
  local n = tonumber(seg)
  if n and value[1] ~= nil then return value[n + 1] end
  return value[seg]
end

local function ref_text(v)
  if type(v) == "number" then return json.encode(json.integral(v)) end
  if type(v) == "string" then return url_encode(v) end
  if v == true then return "1" end
  return "" -- false, nil, arrays
end

-- Replace $result[key][F]..., $error[key], $time[key], $next[key], $total[key]
-- in a sub-call's query before it is parsed.
local function substitute(query, maps)
  local out, pos = {}, 1
  while true do
    local s, e, name, key = query:find("%$(%a+)%[([^%]]*)%]", pos)
    if not s then break end
    local map = REF_MAPS[name] and maps[REF_MAPS[name]]
    if not map then
      out[#out + 1] = query:sub(pos, e)
      pos = e + 1
    else
      local value, p = ref_index(map, key), e + 1
      while true do
        local seg, np = query:match("^%[([^%]]*)%]()", p)
        if not seg then break end
        value, p = ref_index(value, seg), np
      end
      out[#out + 1] = query:sub(pos, s - 1)
      out[#out + 1] = ref_text(value)
      pos = p
    end
  end
  out[#out + 1] = query:sub(pos)
  return table.concat(out)
end

local function method_name(s)
  return (s:lower():gsub("%.json$", ""))
end

-- Sub-calls run in order with the batch's auth. The batch counts once for the
-- leaky bucket (already done by the caller) and is not charged operating time
-- itself; every sub-call is charged to its own method.
function Portal:run_batch(params, start, entry)
  local maps = { result = omap(), result_error = omap(), result_total = omap(),
    result_next = omap(), result_time = omap() }
  local halt, now, n, processing, last_op = truthy(params.halt), start, 0, 0, nil
  local calls = {}
  for _, kv in ipairs(php_pairs(params.cmd)) do
    local key, cmd = kv[1], kv[2]
    if type(cmd) == "string" then -- non-string commands are skipped (FACTS §6 [src])
      n = n + 1
      local out, method, sub_params
      if n > PAGE_SIZE then
        out = fail(400, "ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")
      else
        local path, query = cmd:match("^([^?]*)%??(.*)$")
        method = method_name(path)
        sub_params = parse_form(substitute(query, maps))
        if method == "batch" then
          out = fail(405, "ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage")
        else
          out = self:call(method, sub_params, now)
          if out.finish then
            processing = processing + (out.finish - now)
            now = out.finish
          end
        end
      end
      calls[#calls + 1] = obj("key", key, "method", method, "params", sub_params, "error", out.error)
      if out.failed then
        set(maps.result_error, key, error_body(out.error, out.error_description))
      else
        set(maps.result, key, out.result)
        set(maps.result_total, key, out.total)
        set(maps.result_next, key, out.next)
        set(maps.result_time, key, out.time)
        last_op = out.time.operating
      end
      if out.failed and halt then break end
    end
  end
  set(entry, "calls", calls)
  local finish = math.max(self.clock(), now)
  local result = obj("result", maps.result, "result_error", maps.result_error,
    "result_total", maps.result_total, "result_next", maps.result_next, "result_time", maps.result_time)
  -- Outer time block: like the real samples, `operating` mirrors the last
  -- successful sub-call (0 and no reset time when none succeeded).
  return obj("result", result, "time", time_block(start, finish, processing, last_op,
    OP_WINDOW * self.cfg.op_bucket))
end

--- REST entry point --------------------------------------------------------------------

-- "/rest/1/code/crm.x.json" -> webhook route; "/rest/crm.x" -> OAuth route.
local function parse_rest_path(path)
  local user, code, tail = path:match("^/rest/(%d+)/([^/]+)/([^/]+)$")
  if user then
    return { kind = "webhook", user = tonumber(user), code = code, tail = tail }
  end
  tail = path:match("^/rest/([^/]+)$")
  if tail then return { kind = "oauth", tail = tail } end
end

local function oauth_token(params, headers)
  for _, name in ipairs({ "auth", "access_token" }) do
    local v = params[name]
    if type(v) == "string" and v ~= "" then return v end
  end
  local h = (headers or {})["authorization"]
  return h and h:match("^[Bb]earer%s+(%S+)")
end

-- Webhook: a wrong user id or code gets the documented 401 NO_AUTH_FOUND
-- (system-errors.md: "Invalid access token or webhook code"). On-prem [src]
-- answers INVALID_CREDENTIALS (401) instead; we follow the docs.
function Portal:authenticate(route, params, req, entry)
  if route.kind == "webhook" then
    if route.user ~= self.user_id or route.code ~= self.code then return ERR.no_auth() end
    return nil
  end
  local token = oauth_token(params, req.headers)
  if not token then
    set(entry, "auth", "none")
    return ERR.no_auth()
  end
  local t = self.access_tokens[token]
  if not t then return ERR.invalid_token() end
  if t.expired or self.clock() - t.issued > self.cfg.token_ttl then return ERR.expired_token() end
end

function Portal:new_entry(method, auth, req, params, now)
  local headers = req.headers or {}
  return obj("n", #self.log + 1, "method", method, "http_method", req.method or "GET", "auth", auth,
    "params", params, "conn", req.conn, "time", float(now), "query", req.query or "",
    "user_agent", headers["user-agent"], "host", headers["host"])
end

function Portal:finish(entry, res)
  set(entry, "status", res.status)
  set(entry, "error", res.error_code)
  if res.fault then set(entry, "fault", res.fault) end
  self.log[#self.log + 1] = entry
  res.error_code = nil
  return res
end

function Portal:rest(req, route)
  local now = self.clock()
  local method, xml = method_name(route.tail), route.tail:lower():match("%.xml$")
  local params = request_params(req)
  local entry = self:new_entry(method, route.kind, req, params, now)
  local auth_err = self:authenticate(route, params, req, entry)
  if auth_err then return self:finish(entry, error_response(auth_err)) end
  if xml then
    return self:finish(entry, json_response(400, error_body("INVALID_REQUEST", "The fake portal answers JSON only")))
  end

  local f = self:take_fault(method)
  local replaced = f and fault_response(f, req, route.tail)
  if replaced then
    replaced.delay = f.delay
    return self:finish(entry, replaced)
  end

  local res
  if not self:admit(now) then
    res = error_response(ERR.query_limit())
  elseif method == "batch" then
    res = json_response(200, self:run_batch(params, now, entry))
  else
    local out = self:call(method, params, now)
    res = out.failed and error_response(out) or json_response(200, success_body(out))
  end
  if f then
    res.delay = f.delay
    apply_post_fault(f, res)
  end
  return self:finish(entry, res)
end

--- OAuth token endpoint (oauth.bitrix.info, FACTS §8) ----------------------------------

function Portal:token_response(base_url, now)
  local ttl = self.cfg.token_ttl
  local rest = (base_url or "http://127.0.0.1") .. "/rest/"
  return obj(
    "access_token", self.access_token,
    "client_endpoint", rest,
    "domain", "oauth.bitrix.info",
    "expires", json.integral(math.floor(now) + ttl),
    "expires_in", ttl,
    "member_id", self.member_id,
    "refresh_token", self.refresh_token,
    "scope", "crm",
    "server_endpoint", rest,
    "status", "L",
    "user_id", self.user_id)
end

local function token_error(status, code, text)
  return json_response(status, error_body(code, text))
end

function Portal:token_endpoint(req)
  local now = self.clock()
  local p = request_params(req)
  local entry = self:new_entry("oauth.token", "none", req, p, now)
  local f = self:take_fault("oauth.token")
  local replaced = f and fault_response(f, req, "")
  if replaced then
    replaced.delay = f.delay
    return self:finish(entry, replaced)
  end
  local res
  local function given(k) return type(p[k]) == "string" and p[k] ~= "" end
  if not (given("grant_type") and given("client_id") and given("client_secret")) then
    res = token_error(400, "invalid_request", "Missing grant_type, client_id or client_secret")
  elseif p.client_id ~= self.client_id or p.client_secret ~= self.client_secret then
    res = token_error(401, "invalid_client", "Invalid client credentials")
  elseif p.grant_type == "authorization_code" then
    res = token_error(400, "invalid_grant", "Invalid authorization code") -- no codes are ever issued
  elseif p.grant_type ~= "refresh_token" then
    res = token_error(400, "invalid_request", "Unsupported grant_type")
  elseif not given("refresh_token") then
    res = token_error(400, "invalid_request", "Missing refresh_token")
  elseif not self.refresh_tokens[p.refresh_token] then
    res = token_error(400, "invalid_grant", "Invalid refresh token")
  else
    self:issue_tokens()
    res = json_response(200, self:token_response(req.base_url, now))
  end
  if f then
    res.delay = f.delay
    apply_post_fault(f, res)
  end
  return self:finish(entry, res)
end

--- /_fake/ control endpoints (no auth, not logged) ------------------------------------

local CONTROL = {}

function CONTROL.info(self) return 200, self:info() end
function CONTROL.requests(self) return 200, self:requests() end
function CONTROL.stats(self) return 200, self:stats() end

function CONTROL.reset(self, body)
  self:reset(body)
  return 200, obj("ok", true)
end

function CONTROL.fault(self, body)
  if truthy(body.clear) then
    self:clear_faults()
    return 200, obj("ok", true, "faults", 0)
  end
  local ok_, res = pcall(self.fault, self, body)
  if not ok_ then return 400, error_body("BAD_FAULT", tostring(res)) end
  return 200, obj("ok", true, "faults", res)
end

function CONTROL.config(self, body)
  local cfg = self:configure(body)
  return 200, obj("ok", true, "rate", cfg.rate, "burst", cfg.burst, "op_limit", cfg.op_limit,
    "token_ttl", cfg.token_ttl, "op_cost", cfg.op_cost)
end

function CONTROL.expire_tokens(self)
  self:expire_tokens()
  return 200, obj("ok", true)
end

function Portal:control(req)
  local name = req.path:match("^/_fake/([%w_]+)/?$")
  local handler = name and CONTROL[name]
  if not handler then
    return json_response(404, error_body("NOT_FOUND", "Unknown control endpoint"))
  end
  local body = json.decode(req.body or "")
  if type(body) ~= "table" then body = omap() end
  local status, out = handler(self, body)
  local res = json_response(status, out)
  res.error_code = nil
  return res
end

--- Entry point -----------------------------------------------------------------------

function Portal:handle(req)
  local path = req.path or "/"
  if path:sub(1, 7) == "/_fake/" then
    return self:control(req)
  end
  if path == "/oauth/token/" or path == "/oauth/token" then
    return self:token_endpoint(req)
  end
  local route = parse_rest_path(path)
  if route then
    return self:rest(req, route)
  end
  if path:sub(1, 6) == "/rest/" then
    local entry = self:new_entry("", "none", req, request_params(req), self.clock())
    return self:finish(entry, error_response(ERR.not_found_method()))
  end
  return { status = 404, headers = { ["Content-Type"] = "text/html" },
    body = "<html><body><h1>404 Not Found</h1></body></html>" }
end

Portal.intval, Portal.truthy, Portal.parse_form = intval, truthy, parse_form -- for specs

return Portal
