-- bitrix24: a Bitrix24 REST client.
--
--   local client = bitrix24.webhook("https://portal/rest/1/CODE/")
--   local rows, err, meta = client:call("crm.lead.contact.items.get", { id = 1 })
--
-- The C core (bitrix24.core) does the HTTP and the JSON; this file holds
-- configuration and policy: what a valid call is, where auth goes, when a
-- token is refreshed, and what may be shown of a secret.

local core = require "bitrix24.core"
local errors = require "bitrix24.errors"
local methods = require "bitrix24.methods"
local batch = require "bitrix24.batch"
local paging = require "bitrix24.paging"
local auth = require "bitrix24.auth"
local limiter = require "bitrix24.limiter"
local pipeline = require "bitrix24.pipeline"
local fanout = require "bitrix24.fanout"
local runtime = require "bitrix24.runtime"

-- Programmer errors: the checks below return nil and why; each public
-- function raises why once, blaming its caller (errors.raise(2, why)).
local fail = errors.message

local M = {
  _NAME = "bitrix24",
  _VERSION = "0.1.0",
}

local Client = {}

local OPTIONS = {
  timeout = "number", connect_timeout = "number", allow_http = "boolean",
  ca_file = "string", ca_path = "string", tls_verify = "boolean",
  user_agent = "string", proxy = "string", max_response = "number",
  on_request = "function", on_response = "function",
  rate = "number", burst = "number", plan = "string", budget = "table", rate_limit = "boolean",
  max_wait = "number", deadline = "number", tries = "number", retry_writes = "boolean",
  operating_limit = "number", transport = "any", parallel = "number",
}

-- Options in seconds and their most: a bound that is infinite, or longer
-- than a day, bounds nothing (the C core takes at most a day too).
local MAX_SECONDS = 86400
local SECONDS = { timeout = true, connect_timeout = true, deadline = true, max_wait = true }

-- Returns the options (a table), or nil and why.
local function check_opts(opts)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    return nil, fail("opts must be a table, got %s", type(opts))
  end
  for k, v in pairs(opts) do
    local want = OPTIONS[k]
    if not want then
      return nil, fail("unknown option opts.%s", tostring(k))
    elseif want ~= "any" and type(v) ~= want then
      return nil, fail("opts.%s must be a %s, got %s", k, want, type(v))
    elseif want == "number" and not (v > 0) then
      return nil, fail("opts.%s must be positive, got %s", k, tostring(v))   -- NaN too
    elseif want == "number" and v == math.huge then
      return nil, fail("opts.%s must be finite, got %s", k, tostring(v))
    elseif SECONDS[k] and v > MAX_SECONDS then
      return nil, fail("opts.%s must be at most %d seconds (a day), got %s", k, MAX_SECONDS, tostring(v))
    end
  end
  if opts.plan ~= nil and not limiter.PLANS[opts.plan] then
    return nil, fail('opts.plan must be "standard" or "enterprise", got %q', opts.plan)
  end
  if opts.budget ~= nil and type(opts.budget.update) ~= "function" and type(opts.budget.reserve) ~= "function" then
    return nil, fail("opts.budget must have an update or a reserve function (see bitrix24.file_budget)")
  end
  local t = opts.transport
  if t ~= nil and t ~= "curl" and t ~= "nginx" and not (type(t) == "table" and type(t.call) == "function"
      and type(t.request) == "function" and type(t.close) == "function") then
    return nil, fail('opts.transport must be "curl", "nginx" or an object with call, request and close')
  end
  if opts.tries ~= nil and opts.tries ~= math.floor(opts.tries) then
    return nil, fail("opts.tries must be a whole number")
  end
  local bad = fanout.check(opts.parallel, "")
  if bad then return nil, bad end
  return opts
end

local warned_tls = false

local function new_client(credentials, opts)
  if opts.tls_verify == false and not warned_tls then
    warned_tls = true
    io.stderr:write("bitrix24: TLS certificate verification is OFF (tls_verify = false)\n")
  end
  local http_opts = {
    timeout = opts.timeout, connect_timeout = opts.connect_timeout,
    ca_file = opts.ca_file, ca_path = opts.ca_path, tls_verify = opts.tls_verify,
    proxy = opts.proxy, max_response = opts.max_response,
    user_agent = opts.user_agent or ("bitrix24-lua/" .. M._VERSION),
  }
  local kind = opts.transport
  if kind == nil then kind = runtime.nginx and "nginx" or "curl" end
  local c = setmetatable({
    _auth = credentials, _opts = opts, _http = runtime.transport(kind, http_opts), _http_opts = http_opts,
    _transport_kind = type(kind) == "string" and kind or "custom",
    _limiter = limiter.new(credentials.origin, opts, runtime),
    _policy = { tries = opts.tries or 5, retry_writes = opts.retry_writes or false },
    _parallel = opts.parallel or 1,
  }, Client)
  c._io = fanout.io(c)
  return c
end

-- A webhook client, or nil and why.
local function webhook(url, opts)
  local credentials, why
  opts, why = check_opts(opts)
  if opts then credentials, why = auth.webhook(url, opts) end
  if not credentials then return nil, why end
  return new_client(credentials, opts)
end

-- An OAuth client, or nil and why.
local function oauth(cfg, opts)
  if type(cfg) ~= "table" then
    return nil, fail("oauth config must be a table, got %s", type(cfg))
  end
  local why
  opts, why = check_opts(opts)
  if not opts then return nil, why end
  local merged = {}
  for k, v in pairs(opts) do merged[k] = v end
  for _, k in ipairs { "ca_file", "ca_path", "tls_verify" } do
    if cfg[k] ~= nil and merged[k] == nil then merged[k] = cfg[k] end
  end
  local credentials
  merged, why = check_opts(merged)
  if merged then credentials, why = auth.oauth(cfg, merged) end
  if not credentials then return nil, why end
  return new_client(credentials, merged)
end

--- Incoming webhook: https://portal/rest/<user_id>/<code>/
function M.webhook(url, opts)
  local client, why = webhook(url, opts)
  if not client then errors.raise(2, why) end
  return client
end

--- OAuth application: tokens go in the request body, never in the URL.
--- TLS options may be given in the config as well as in opts.
function M.oauth(cfg, opts)
  local client, why = oauth(cfg, opts)
  if not client then errors.raise(2, why) end
  return client
end

M.file_store = auth.file_store
M.shared_dict_store = auth.shared_dict_store
M.file_budget = limiter.file_budget
M.shared_dict_budget = limiter.shared_dict_budget

-- Shared between machines through Redis (README, "Many machines"): loaded
-- on first use, so the client needs no Redis library until then.
function M.redis_budget(config) return require("bitrix24.redis_budget").new(config) end
function M.redis_store(config, key) return require("bitrix24.redis_store").new(config, key) end

--- BITRIX24_WEBHOOK_URL, else BITRIX24_OAUTH_ENDPOINT with
--- BITRIX24_OAUTH_ACCESS_TOKEN, _REFRESH_TOKEN, _CLIENT_ID, _CLIENT_SECRET
--- and _TOKEN_URL. Returns nil, err when neither is set.
function M.from_env(opts)
  local url = os.getenv("BITRIX24_WEBHOOK_URL")
  local endpoint = os.getenv("BITRIX24_OAUTH_ENDPOINT")
  local client, why
  if url and url ~= "" then
    client, why = webhook(url, opts)
  elseif endpoint and endpoint ~= "" then
    local function env(k)
      local v = os.getenv("BITRIX24_OAUTH_" .. k)
      if v ~= "" then return v end
    end
    client, why = oauth({
      endpoint = endpoint, access_token = env("ACCESS_TOKEN"),
      refresh_token = env("REFRESH_TOKEN"), client_id = env("CLIENT_ID"),
      client_secret = env("CLIENT_SECRET"), token_url = env("TOKEN_URL"),
    }, opts)
  else
    return nil, errors.new {
    code = "NO_CONFIG",
    description = "set BITRIX24_WEBHOOK_URL, or BITRIX24_OAUTH_ENDPOINT and BITRIX24_OAUTH_ACCESS_TOKEN",
  }
  end
  if not client then errors.raise(2, why) end
  return client
end

local function fail_error(a, method, code, description, status)
  return errors.new {
    code = code,
    description = errors.redact(description, a.secrets),
    status = status,
    method = method,
  }
end

-- The JSON body of a call (OAuth's token is added at send time, see
-- pipeline.lua).
-- Returns the body, or nil and why.
local function json_body(self, method, params)
  local ok, body = pcall(core.json_encode, params)
  if not ok then
    return nil, fail("%s: params cannot be sent as JSON: %s", method, tostring(body))
  end
  if body:sub(1, 1) ~= "{" and self._auth.kind == "oauth" then
    return nil, fail("%s: params must have string keys with OAuth (the token goes beside them)", method)
  end
  return body
end

local function check_params(method, params)
  if params == nil then return {} end
  if type(params) ~= "table" then
    return nil, fail("%s: params must be a table or nil, got %s", method, type(params))
  end
  return params
end

local function check_client(self, name)
  if getmetatable(self) ~= Client then
    return nil, fail("%s: use client:%s(...)", name, name)
  end
  if not rawget(self, "_http") then return nil, fail("%s: the client is closed", name) end
  return true
end

-- Checks a call of method by the client function `name`: returns its
-- JSON body and the params to send, or nil and why.
local function prepare(self, name, method, params)
  local ok, why = check_client(self, name)
  if ok then ok, why = methods.check_name(method) end
  if ok then params, why = check_params(method, params) end
  if ok and params then params, why = methods.validate(method, params) end
  if not (ok and params) then return nil, why end
  local body
  body, why = json_body(self, method, params)
  if not body then return nil, why end
  return body, params
end

-- The pipeline's request for a checked call of method with its body.
local function request(self, method, body)
  return pipeline.request(self, method, body)
end

local function send(self, method, body)
  local env, err = pipeline.run(self, request(self, method, body), self._io)
  if not env then return nil, err end
  return env.result, nil, env
end

--- client:call(method, params) -> result, nil, envelope | nil, err
function Client:call(method, params)
  local body, why = prepare(self, "call", method, params)
  if not body then errors.raise(2, why) end
  return send(self, method, body)
end

-- For the library's own bulk work (batch, lead_contacts, exports): sends
-- `requests` with at most `parallel` in flight (nil: the client's
-- opts.parallel) and calls on_each(i, envelope, err) for each, in the
-- order of `requests`; on_each returning false stops the rest. A request
-- is { method, params }, or { method = name, body = json, subcalls = a
-- batch's keys -> their methods } for a body made already (the pipeline
-- decides from those names whether it may be repeated).
-- Every request is checked before any is sent: returns nil and why for a
-- bad one (the caller raises it), else true.
function Client:_send_all(requests, parallel, on_each)
  local reqs = {}
  for i, r in ipairs(requests) do
    if r.body then
      reqs[i] = pipeline.request(self, r.method, r.body, r.subcalls)
    else
      local method = r[1] or r.method
      local body, why = prepare(self, "calls", method, r[2] or r.params)
      if not body then return nil, why end
      reqs[i] = request(self, method, body)
    end
  end
  fanout.run(self, reqs, parallel or self._parallel, on_each)
  return true
end

--- client:calls({ { method, params }, ... }, opts) -> results, errs
--- Many calls, up to opts.parallel in flight: results[i] is the result of
--- the i-th call, or errs[i] its error. opts.progress(done, total).
local function check_calls(self, list, opts)
  local ok, why = check_client(self, "calls")
  if not ok then return nil, why end
  if type(list) ~= "table" then return nil, fail("calls: list must be an array of { method, params }") end
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then return nil, fail("calls: opts must be a table, got %s", type(opts)) end
  if opts.progress ~= nil and type(opts.progress) ~= "function" then
    return nil, fail("calls: opts.progress must be a function")
  end
  local bad = fanout.check(opts.parallel, "calls: ")
  if bad then return nil, bad end
  for i = 1, #list do
    if type(list[i]) ~= "table" then return nil, fail("calls: list[%d] must be a table { method, params }", i) end
  end
  return opts
end

function Client:calls(list, opts)
  local why
  opts, why = check_calls(self, list, opts)
  if not opts then errors.raise(2, why) end
  local results, errs, done, total = {}, {}, 0, #list
  local sent
  sent, why = self:_send_all(list, opts.parallel, function(i, env, err)
    if env then results[i] = env.result else errs[i] = err end
    done = done + 1
    if opts.progress then opts.progress(done, total) end
  end)
  if not sent then errors.raise(2, why) end
  return results, errs
end

local function make_error(self)
  return function(code, description, method) return fail_error(self._auth, method, code, description) end
end

-- Sends a batch plan's requests, together unless it halts or carries a
-- write: requests in flight together all run, so a failed one could not
-- stop writes sent beside or after it, and the answers after a failure are
-- not reported (err.partial ends at the failure).
local function send_batch(self, plan)
  local parallel = (plan.halt or not plan.reads_only) and 1 or plan.parallel
  return batch.run(plan, function(bodies, on_each)
    local requests = {}
    for i, body in ipairs(bodies) do
      -- Each command's time is charged to its own method (FACTS §5).
      local subcalls = {}
      for _, key in ipairs(plan.chunks[i]) do subcalls[key] = plan.methods[key] end
      requests[i] = { method = "batch", body = body, subcalls = subcalls }
    end
    self:_send_all(requests, parallel, on_each)
  end, make_error(self))
end

--- client:batch(commands, opts) -> results | nil, err
--- commands: { key = { method, params }, ... }; opts.halt, opts.progress,
--- opts.parallel.
function Client:batch(commands, opts)
  local plan, why = check_client(self, "batch")
  if plan then plan, why = batch.plan(commands, opts) end
  if not plan then errors.raise(2, why) end
  return send_batch(self, plan)
end

--- client:lead_contacts(ids, opts) -> rows_by_lead, errors_by_lead | nil, err
function Client:lead_contacts(ids, opts)
  local plan, keys = check_client(self, "lead_contacts")
  if plan then plan, keys = batch.plan_lead_contacts(ids, opts) end
  if plan == nil then errors.raise(2, keys) end   -- keys is why here
  if not plan then return {}, {} end              -- no ids: nothing to send
  local results, err = send_batch(self, plan)
  return batch.by_lead(keys, results, err)
end

-- Sends the requests of client:each, up to `parallel` in flight, and
-- returns their answers in the same order, each { envelope } or { nil, err }.
local function send_pages(self, requests, parallel)
  local list = {}
  for i, r in ipairs(requests) do
    if r.batch then
      list[i] = { method = "batch", body = batch.body(r.batch.keys, r.batch.cmd, true), subcalls = r.batch.methods }
    else
      -- Checked with the caller's params: pages only add paging keys.
      local body, bad = json_body(self, r.method, r.params)
      if not body then errors.raise(1, bad) end
      list[i] = { method = r.method, body = body }
    end
  end
  local answers = {}
  self:_send_all(list, parallel, function(i, env, err) answers[i] = { env, err } end)
  return answers
end

--- for item, err in client:each(method, params, opts) do ... end
--- opts: fast, page_batch, parallel, id_key, progress (README "Exports").
function Client:each(method, params, opts)
  local body, checked = prepare(self, "each", method, params)
  local pager, why
  if body then pager, why = paging.new(method, checked, opts, self._parallel) else why = checked end
  if not pager then errors.raise(2, why) end
  return pager:iterator(function(requests) return send_pages(self, requests, #requests) end,
    function(code, description, m) return fail_error(self._auth, m, code, description) end)
end

-- The typed form: client.crm.lead.contact.items.get{ id = 1 } calls
-- "crm.lead.contact.items.get". Each step is a small callable table. A
-- typed path has at least one dot: a single word called on the client
-- (client:batc{}) is a typo of one of its methods, not a REST method
-- (client:call("profile") calls one-word methods).
local Namespace = {}

local function namespace(client, name)
  return setmetatable({ _client = client, _name = name }, Namespace)
end

Namespace.__index = function(ns, key)
  if type(key) ~= "string" then return nil end
  return namespace(rawget(ns, "_client"), rawget(ns, "_name") .. "." .. key)
end

local CLIENT_METHODS = { "batch", "bind", "call", "calls", "close", "each", "event_bindings", "lead_contacts",
  "unbind" }

-- Edit distance of two short words (insertions, deletions, substitutions).
local function distance(a, b)
  local row = {}
  for j = 0, #b do row[j] = j end
  for i = 1, #a do
    local diagonal = row[0]
    row[0] = i
    for j = 1, #b do
      local up = row[j]
      row[j] = math.min(up + 1, row[j - 1] + 1, diagonal + (a:byte(i) == b:byte(j) and 0 or 1))
      diagonal = up
    end
  end
  return row[#b]
end

local function not_a_method(name)
  local lower = name:lower()
  for _, m in ipairs(CLIENT_METHODS) do
    if distance(lower, m) <= 2 then
      return fail("client:%s is not a method of the client (did you mean %s?)", name, m)
    end
  end
  return fail("client:%s is not a method of the client (its methods: %s); the typed form needs a dotted"
    .. " method name such as client.crm.lead.list{}, and client:call(\"%s\") calls any method",
    name, table.concat(CLIENT_METHODS, ", "), name)
end

Namespace.__call = function(ns, params, ...)
  -- Also called as items:get{...}: the first argument is then the parent.
  if getmetatable(params) == Namespace then params = ... end
  local client, name = rawget(ns, "_client"), rawget(ns, "_name")
  local body, why
  if name:match("^[%w_]+$") then
    why = not_a_method(name)
  else
    body, why = prepare(client, name, name, params)
  end
  if not body then errors.raise(2, why) end
  return send(client, name, body)
end

Namespace.__tostring = function(ns)
  return "bitrix24 method " .. rawget(ns, "_name")
end

function Client:__index(key)
  local m = Client[key]
  if m ~= nil then return m end
  if type(key) == "string" and key:sub(1, 1) ~= "_" then return namespace(self, key) end
  return nil
end

--- Frees the connection; the client cannot be used afterwards.
--- Called during a fan-out (from a callback), it stops the requests in
--- flight; those not finished end with CANCELLED.
function Client:close()
  if self._http then
    self._http:close()
    self._http = nil
  end
  local m = rawget(self, "_multi_handle")
  if m then
    m:close()
    self._multi_handle = nil
  end
end

Client.__close = Client.close

-- Event bindings (bitrix24.events.binding): OAuth clients only; a webhook
-- client raises before anything is sent.
local binding = require "bitrix24.events.binding"

-- The body of an event method call checked by check(), or nil and why.
local function event_body(self, name, method, check)
  local params, why = check_client(self, name)
  if params then params, why = check() end
  if not params then return nil, why end
  return prepare(self, name, method, params)
end

--- client:bind(event, handler_url, opts) -> true | nil, err
--- opts: event_type ("online"|"offline": then handler_url is nil), auth_type, auth_connector, options.
function Client:bind(event, handler, opts)
  local body, why = event_body(self, "bind", "event.bind",
    function() return binding.params(self, "bind", event, handler, opts) end)
  if not body then errors.raise(2, why) end
  return send(self, "event.bind", body)
end

--- client:unbind(event, handler_url, opts) -> { count = n } | nil, err
function Client:unbind(event, handler, opts)
  local body, why = event_body(self, "unbind", "event.unbind",
    function() return binding.params(self, "unbind", event, handler, opts) end)
  if not body then errors.raise(2, why) end
  return send(self, "event.unbind", body)
end

--- client:event_bindings() -> { { event, handler, auth_type, offline }, ... } | nil, err
function Client:event_bindings()
  local body, why = event_body(self, "event_bindings", "event.get", function()
    local ok, bad = binding.check_app(self, "event_bindings")
    if not ok then return nil, bad end
    return {}
  end)
  if not body then errors.raise(2, why) end
  return send(self, "event.get", body)
end

function Client:__tostring()
  return "bitrix24 client (" .. self._auth.kind .. " " .. self._auth.shown .. ")"
end

return M
