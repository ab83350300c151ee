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

local function check_opts(opts, level)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    errors.raise(level, "opts must be a table, got %s", type(opts))
  end
  for k, v in pairs(opts) do
    local want = OPTIONS[k]
    if not want then
      errors.raise(level, "unknown option opts.%s", tostring(k))
    elseif want ~= "any" and type(v) ~= want then
      errors.raise(level, "opts.%s must be a %s, got %s", k, want, type(v))
    elseif want == "number" and not (v > 0) then
      errors.raise(level, "opts.%s must be positive", k)
    end
  end
  if opts.plan ~= nil and not limiter.PLANS[opts.plan] then
    errors.raise(level, 'opts.plan must be "standard" or "enterprise", got %q', opts.plan)
  end
  if opts.budget ~= nil and type(opts.budget.update) ~= "function" then
    errors.raise(level, "opts.budget must have an update function (see bitrix24.file_budget)")
  end
  local t = opts.transport
  if t ~= nil and t ~= "curl" and t ~= "nginx" and not (type(t) == "table" and type(t.call) == "function"
      and type(t.request) == "function" and type(t.close) == "function") then
    errors.raise(level, 'opts.transport must be "curl", "nginx" or an object with call, request and close')
  end
  if opts.tries ~= nil and opts.tries ~= math.floor(opts.tries) then
    errors.raise(level, "opts.tries must be a whole number")
  end
  fanout.check(opts.parallel, "", level + 1)
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

--- Incoming webhook: https://portal/rest/<user_id>/<code>/
function M.webhook(url, opts)
  opts = check_opts(opts, 2)
  return new_client(auth.webhook(url, opts, 2), opts)
end

--- OAuth application: tokens go in the request body, never in the URL.
--- TLS options may be given in the config as well as in opts.
function M.oauth(cfg, opts)
  if type(cfg) ~= "table" then
    errors.raise(1, "oauth config must be a table, got %s", type(cfg))
  end
  opts = check_opts(opts, 2)
  local merged = {}
  for k, v in pairs(opts) do merged[k] = v end
  for _, k in ipairs { "ca_file", "ca_path", "tls_verify" } do
    if cfg[k] ~= nil and merged[k] == nil then merged[k] = cfg[k] end
  end
  merged = check_opts(merged, 2)
  return new_client(auth.oauth(cfg, merged, 2), merged)
end

M.file_store = auth.file_store
M.shared_dict_store = auth.shared_dict_store
M.file_budget = limiter.file_budget
M.shared_dict_budget = limiter.shared_dict_budget

--- BITRIX24_WEBHOOK_URL, else BITRIX24_OAUTH_ENDPOINT with
--- BITRIX24_OAUTH_ACCESS_TOKEN, _REFRESH_TOKEN, _CLIENT_ID, _CLIENT_SECRET
--- and _TOKEN_URL. Returns nil, err when neither is set.
function M.from_env(opts)
  local url = os.getenv("BITRIX24_WEBHOOK_URL")
  if url and url ~= "" then return M.webhook(url, opts) end
  local endpoint = os.getenv("BITRIX24_OAUTH_ENDPOINT")
  if endpoint and endpoint ~= "" then
    local function env(k)
      local v = os.getenv("BITRIX24_OAUTH_" .. k)
      if v ~= "" then return v end
    end
    return M.oauth({
      endpoint = endpoint, access_token = env("ACCESS_TOKEN"),
      refresh_token = env("REFRESH_TOKEN"), client_id = env("CLIENT_ID"),
      client_secret = env("CLIENT_SECRET"), token_url = env("TOKEN_URL"),
    }, opts)
  end
  return nil, errors.new {
    code = "NO_CONFIG",
    description = "set BITRIX24_WEBHOOK_URL, or BITRIX24_OAUTH_ENDPOINT and BITRIX24_OAUTH_ACCESS_TOKEN",
  }
end

local function fail(a, method, code, description, status)
  return errors.new {
    code = code,
    description = errors.redact(description, a.secrets),
    status = status,
    method = method,
  }
end

-- The JSON body of a call (OAuth's token is added at send time, see
-- pipeline.lua).
local function json_body(self, method, params, level)
  local ok, body = pcall(core.encode, params)
  if not ok then
    errors.raise(level, "%s: params cannot be sent as JSON: %s", method, tostring(body))
  end
  if body:sub(1, 1) ~= "{" and self._auth.kind == "oauth" then
    errors.raise(level, "%s: params must have string keys with OAuth (the token goes beside them)", method)
  end
  return body
end

local function check_params(method, params, level)
  if params == nil then return {} end
  if type(params) ~= "table" then
    errors.raise(level, "%s: params must be a table or nil, got %s", method, type(params))
  end
  return params
end

local function check_client(self, name, level)
  if getmetatable(self) ~= Client then
    errors.raise(level, "%s: use client:%s(...)", name, name)
  end
  if not rawget(self, "_http") then errors.raise(level, "%s: the client is closed", name) end
end

-- A request state for the pipeline: the method and params checked and
-- encoded (a bad one raises, blaming `level`, counted from prepare).
local function prepare(self, method, params, level)
  local key = methods.check_name(method, level + 1)
  params = check_params(method, params, level + 1)
  params = methods.validate(method, params, level + 1)
  local body = json_body(self, method, params, level + 1)
  return pipeline.request(self, method, key, body, self._opts.retry_writes or pipeline.is_read(method))
end

-- level: the frame to blame, counted from call (1: its caller).
local function call(self, method, params, level)
  local env, err = pipeline.run(self, prepare(self, method, params, level + 1), self._io)
  if not env then return nil, err end
  return env.result, nil, env
end

--- client:call(method, params) -> result, nil, envelope | nil, err
function Client:call(method, params)
  check_client(self, "call", 2)
  local result, err, env = call(self, method, params, 2)
  return result, err, env
end

-- For the library's own bulk work (batch, lead_contacts, exports):
-- sends `requests` with at most `parallel` in flight (nil: the client's
-- opts.parallel) and calls on_each(i, envelope, err) for each, in the
-- order of `requests`; on_each returning false stops the rest. A request
-- is { method, params } (checked before anything is sent: a bad one
-- raises, blaming `level`, counted from _send_all) or { method = "batch",
-- body = json, safe = bool }.
function Client:_send_all(requests, parallel, on_each, level)
  local reqs = {}
  for i, r in ipairs(requests) do
    if r.body then
      reqs[i] = pipeline.request(self, r.method, r.method:lower(), r.body, r.safe)
    else
      reqs[i] = prepare(self, r[1] or r.method, r[2] or r.params, (level or 1) + 1)
    end
  end
  fanout.run(self, reqs, parallel or self._parallel, on_each)
end

--- client:calls({ { method, params }, ... }, opts) -> results, errs
--- Many calls, up to opts.parallel in flight: results[i] is the result of
--- the i-th call, or errs[i] its error. opts.progress(done, total).
function Client:calls(list, opts)
  check_client(self, "calls", 2)
  if type(list) ~= "table" then errors.raise(1, "calls: list must be an array of { method, params }") end
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then errors.raise(1, "calls: opts must be a table, got %s", type(opts)) end
  if opts.progress ~= nil and type(opts.progress) ~= "function" then
    errors.raise(1, "calls: opts.progress must be a function")
  end
  local parallel = fanout.check(opts.parallel, "calls: ", 2)
  for i = 1, #list do
    if type(list[i]) ~= "table" then errors.raise(1, "calls: list[%d] must be a table { method, params }", i) end
  end
  local results, errs, done, total = {}, {}, 0, #list
  self:_send_all(list, parallel, function(i, env, err)
    if env then results[i] = env.result else errs[i] = err end
    done = done + 1
    if opts.progress then opts.progress(done, total) end
  end, 2)
  return results, errs
end

local function make_error(self)
  return function(code, description, method) return fail(self._auth, method, code, description) end
end

-- Sends a batch plan's requests, in parallel unless it halts.
local function send_batch(self, plan, safe)
  local parallel = plan.halt and 1 or plan.parallel
  return batch.run(plan, function(bodies, on_each)
    local requests = {}
    for i, body in ipairs(bodies) do requests[i] = { method = "batch", body = body, safe = safe } end
    self:_send_all(requests, parallel, on_each)
  end, make_error(self))
end

--- client:batch(commands, opts) -> results | nil, err
--- commands: { key = { method, params }, ... }; opts.halt, opts.progress,
--- opts.parallel.
function Client:batch(commands, opts)
  check_client(self, "batch", 2)
  local plan = batch.plan(commands, opts, 2)
  return send_batch(self, plan, plan.reads_only)
end

--- client:lead_contacts(ids, opts) -> rows_by_lead, errors_by_lead | nil, err
function Client:lead_contacts(ids, opts)
  check_client(self, "lead_contacts", 2)
  local plan, keys = batch.plan_lead_contacts(ids, opts, 2)
  if not plan then return {}, {} end
  local results, err = send_batch(self, plan, true)
  return batch.by_lead(keys, results, err)
end

--- for item, err in client:each(method, params, opts) do ... end
function Client:each(method, params, opts)
  check_client(self, "each", 2)
  methods.check_name(method, 2)
  params = check_params(method, params, 2)
  params = methods.validate(method, params, 2)
  json_body(self, method, params, 2)
  local pager = paging.new(method, params, opts, 2)
  return pager:iterator(function(page_params)
    local req = pipeline.request(self, method, methods.check_name(method, 1),
      json_body(self, method, page_params, 1), true)
    return pipeline.run(self, req, self._io)
  end)
end

-- The typed form: client.crm.lead.contact.items.get{ id = 1 } calls
-- "crm.lead.contact.items.get". Each step is a small callable table.
local Namespace = {}

local function namespace(client, name)
  return setmetatable({ _client = client, _name = name }, Namespace)
end

Namespace.__index = function(ns, key)
  if type(key) ~= "string" then return nil end
  return namespace(rawget(ns, "_client"), rawget(ns, "_name") .. "." .. key)
end

Namespace.__call = function(ns, params, ...)
  -- Also called as items:get{...}: the first argument is then the parent.
  if getmetatable(params) == Namespace then params = ... end
  local client = rawget(ns, "_client")
  check_client(client, rawget(ns, "_name"), 2)
  local result, err, env = call(client, rawget(ns, "_name"), params, 2)
  return result, err, env
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

-- The client's core.multi handle, with room for `parallel` requests.
function Client:_multi(parallel)
  local m = rawget(self, "_multi_handle")
  if m and self._multi_parallel >= parallel then return m end
  if m then m:close() end
  local o = { parallel = parallel }
  for k, v in pairs(self._http_opts) do o[k] = v end
  m = core.multi(o)
  self._multi_handle, self._multi_parallel = m, parallel
  return m
end

Client.__close = Client.close

function Client:__tostring()
  return "bitrix24 client (" .. self._auth.kind .. " " .. self._auth.shown .. ")"
end

return M
