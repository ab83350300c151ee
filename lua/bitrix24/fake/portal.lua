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
-- This file is the pipeline of a REST request (webhook or OAuth):
--   parse params -> auth -> fault injection -> leaky bucket -> method lookup
--   -> operating-time limit -> handler -> time block -> log.
-- Faults are checked after auth (so an unauthenticated client never sees
-- them) and before the rate limiter (so an injected failure does not use up
-- the bucket). Every REST and token-endpoint request is logged, rejected
-- ones included; /_fake/ control requests are not.
--
-- The pieces live beside it: php (request parsing), answers (outcomes and
-- errors), records (the data), limits, faults, churn, oauth, batch,
-- control, and the methods themselves in lead_contact and lists.
--
-- Time: every call is charged op_cost simulated seconds (default 0.01) of
-- operating time, plus the real seconds it takes: call_cost, and for a
-- counted list call count_cost_per_1000_rows per 1000 rows of its table.
-- Those real seconds, with the per-request `latency`, come back as the
-- answer's `delay`, which the host waits out without blocking other
-- requests (bitrix24.fake.nginx uses ngx.sleep). All three default to 0.

local json = require "bitrix24.fake.json"
local default_data = require "bitrix24.fake.data"
local php = require "bitrix24.fake.php"
local answers = require "bitrix24.fake.answers"
local records = require "bitrix24.fake.records"
local Limits = require "bitrix24.fake.limits"
local Faults = require "bitrix24.fake.faults"
local oauth = require "bitrix24.fake.oauth"
local batch = require "bitrix24.fake.batch"
local control = require "bitrix24.fake.control"
local Churn = require "bitrix24.fake.churn"
local events = require "bitrix24.fake.events"

local set = json.set
local truthy, request_params = php.truthy, php.request_params
local obj, float, json_response, error_body = answers.obj, answers.float, answers.json_response, answers.error_body
local error_response, ERR = answers.error_response, answers.ERR
local method_name = batch.method_name

-- Method name -> handler(portal, params) returning answers.ok(...) or answers.fail(...).
local METHOD_HANDLERS = {}
for _, methods in ipairs({ require "bitrix24.fake.lead_contact", (require "bitrix24.fake.lists"), events.METHODS }) do
  for name, handler in pairs(methods) do METHOD_HANDLERS[name] = handler end
end

local Portal = {}
Portal.__index = Portal

--- Construction and configuration -------------------------------------------

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
Portal.random_string = random_string

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

local CONFIG_KEYS = { "rate", "burst", "op_limit", "token_ttl", "op_cost", "op_bucket", "latency", "call_cost",
  "count_cost_per_1000_rows" }

-- A count option (leads): nil, or a whole number >= 0.
local function leads_option(v)
  if v == nil or v == json.null then return nil end
  return math.max(0, php.intval(v))
end

Portal.load_data = records.load_data

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
  -- Answer REST calls that did not come over HTTPS as a real portal does.
  self.https_only = truthy(opts.https_only)
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
    -- Real seconds (see the top of this file).
    latency = opts.latency or 0,
    call_cost = opts.call_cost or 0,
    count_cost_per_1000_rows = opts.count_cost_per_1000_rows or 0,
  }
  -- Generate this many leads instead of the data set's (nil: the data set's).
  self.initial_leads = leads_option(opts.leads)
  self.access_tokens, self.refresh_tokens = {}, {}
  oauth.issue_tokens(self)
  self:reset()
  return self
end

-- The data set; `leads` generated leads instead of its own when given.
function Portal:load(data, leads)
  self.leads = leads and records.generated_table(leads) or records.load_table(data.leads, true)
  self.contacts = records.load_table(data.contacts, false)
end

-- Back to the start: data, log, faults, churn and limits. opts.tokens: new
-- tokens too; opts.leads: this many generated leads (once; the next reset
-- goes back to the start's choice).
function Portal:reset(opts)
  opts = opts or {}
  local leads = leads_option(opts.leads)
  if leads == nil then leads = self.initial_leads end
  self:load(self.initial_data, leads)
  self.log = {}
  self.faults = Faults.new()
  self.churn = Churn.new()
  self.cfg = copy(self.initial_cfg)
  self.limits = Limits.new(self.cfg)
  if truthy(opts.tokens) then oauth.reset_tokens(self) end
  events.reset(self)   -- bindings and the offline queue (bitrix24.fake.events)
end

function Portal:configure(t)
  for _, k in ipairs(CONFIG_KEYS) do
    local v = t[k]
    if v == json.null then v = false end
    if v ~= nil then self.cfg[k] = norm(v) end
  end
  return copy(self.cfg)
end

function Portal:fault(spec) return self.faults:add(spec) end
function Portal:expire_tokens() oauth.expire_tokens(self) end

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

--- Calling a method with limits and time ------------------------------------

-- Run one method (top-level or inside batch) at simulated time `start`.
-- Returns the outcome with `time` (success) and `finish` set.
function Portal:call(method, params, start)
  local handler = METHOD_HANDLERS[method]
  if not handler then return ERR.not_found_method() end
  local limit = self.cfg.op_limit -- false/nil disables the limit
  if limit and self.limits:operating(method, start) > limit then
    return ERR.op_limit()
  end
  local out = handler(self, params)
  -- Real seconds: call_cost plus what the handler reports (a list's count).
  out.work = (self.cfg.call_cost or 0) + (out.work or 0)
  local cost = self.limits:cost(method) + out.work
  self.limits:charge(method, start, cost) -- failed calls cost time too
  out.finish = Limits.finish_time(start, cost, self.clock())
  if not out.failed then
    out.time = Limits.time_block(start, out.finish, cost, self.limits:operating(method, start),
      self.limits:window())
    if method == "crm.lead.list" then self.churn:after_list_call(self.leads) end
  end
  return out
end

--- The request log ----------------------------------------------------------

function Portal:new_entry(method, auth, req, params, now)
  local headers = req.headers or {}
  return obj("n", #self.log + 1, "method", method, "http_method", req.method or "GET", "auth", auth,
    "params", params, "conn", req.conn, "time", float(now), "query", req.query or "",
    "user_agent", headers["user-agent"], "host", headers["host"])
end

-- Log the request; the answer waits for its latency and work.
function Portal:finish(entry, res)
  local delay = (res.delay or 0) + (self.cfg.latency or 0) + (res.work or 0)
  res.delay, res.work = delay > 0 and delay or nil, nil
  set(entry, "status", res.status)
  set(entry, "error", res.error_code)
  if res.fault then set(entry, "fault", res.fault) end
  self.log[#self.log + 1] = entry
  res.error_code = nil
  return res
end

function Portal:requests()
  local out = {}
  for i, e in ipairs(self.log) do out[i] = e end
  return out
end

-- Requests per status and distinct connections in the log.
function Portal:stats()
  local by_status, conns, nconn = json.omap(), {}, 0
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

--- REST requests --------------------------------------------------------------

-- "/rest/1/code/crm.x.json" -> webhook route; "/rest/crm.x" -> OAuth route.
local function parse_rest_path(path)
  local user, code, tail = path:match("^/rest/(%d+)/([^/]+)/([^/]+)$")
  if user then
    return { kind = "webhook", user = tonumber(user), code = code, tail = tail }
  end
  tail = path:match("^/rest/([^/]+)$")
  if tail then return { kind = "oauth", tail = tail } end
end

-- Webhook: a wrong user id or code gets the documented 401 NO_AUTH_FOUND
-- (system-errors.md: "Invalid access token or webhook code"). On-prem [src]
-- answers INVALID_CREDENTIALS (401) instead; we follow the docs.
function Portal:authenticate(route, params, req, entry)
  if route.kind == "webhook" then
    if route.user ~= self.user_id or route.code ~= self.code then return ERR.no_auth() end
    return nil
  end
  return oauth.check(self, params, req, entry)
end

-- A fault that replaces the answer, or nil and the fault (if any) that lets
-- the call run and damages its answer later.
function Portal:injected_fault(method, req, rest_tail)
  local f = self.faults:take(method)
  local replaced = f and Faults.response(f, req, rest_tail)
  if replaced then replaced.delay = f.delay end
  return replaced, f
end

local function damage(f, res)
  if f then
    res.delay = f.delay
    Faults.damage(f, res)
  end
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

  local replaced, f = self:injected_fault(method, req, route.tail)
  if replaced then return self:finish(entry, replaced) end

  local res
  if not self.limits:admit(now) then
    res = error_response(ERR.query_limit())
  elseif method == "batch" then
    local body, work = batch.run(self, params, now, entry)
    res = json_response(200, body)
    res.work = work
  else
    local out = self:call(method, params, now)
    res = out.failed and error_response(out) or json_response(200, answers.success_body(out))
    res.work = out.work
  end
  return self:finish(entry, damage(f, res))
end

--- OAuth token endpoint (oauth.bitrix.info, FACTS §8) ----------------------------

function Portal:token_endpoint(req)
  local now = self.clock()
  local p = request_params(req)
  local entry = self:new_entry("oauth.token", "none", req, p, now)
  local replaced, f = self:injected_fault("oauth.token", req, "")
  if replaced then return self:finish(entry, replaced) end
  return self:finish(entry, damage(f, oauth.grant(self, p, req.base_url, now)))
end

--- Entry point -----------------------------------------------------------------

function Portal:handle(req)
  local path = req.path or "/"
  events.begin(self, req)
  if path:sub(1, 7) == "/_fake/" then
    return control.handle(self, req)
  end
  if path == "/oauth/token/" or path == "/oauth/token" then
    return self:token_endpoint(req)
  end
  local route = parse_rest_path(path)
  if self.https_only and req.scheme ~= "https" and path:sub(1, 6) == "/rest/" then
    -- Before auth: the code or token is not even looked at (FACTS §1, §4).
    local entry = self:new_entry(route and method_name(route.tail) or "", route and route.kind or "none",
      req, request_params(req), self.clock())
    return self:finish(entry, json_response(400, error_body("INVALID_REQUEST", "Https required.")))
  end
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

Portal.intval, Portal.truthy, Portal.parse_form = php.intval, truthy, php.parse_form -- for specs

return Portal
