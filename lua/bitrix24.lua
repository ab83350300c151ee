--- bitrix24: a Bitrix24 REST client.
--
--     local client = bitrix24.webhook("https://portal/rest/1/CODE/")
--     local rows, err, meta = client:call("crm.lead.contact.items.get", { id = 1 })
--
-- Failures of the network or the portal return `nil, err` (an `Error` of
-- `bitrix24.errors`); mistakes in the calling code raise, naming the bad
-- argument, and send nothing.
--
-- The C core (`bitrix24.core`) does the HTTP and the JSON; this file holds
-- configuration and policy: what a valid call is, where auth goes, when a
-- token is refreshed, and what may be shown of a secret.
-- @module bitrix24

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
  _VERSION = "0.2.0",
}

local Client = {}

--- The options of a client: the `opts` of `webhook`, `oauth` and `from_env`.
-- All are optional; an unknown one raises, so a typo does not go unnoticed.
-- @table options
-- @tfield[opt=60] number timeout seconds for a whole try, connect to last byte
-- @tfield[opt=10] number connect_timeout seconds to connect
-- @tfield[opt=false] boolean allow_http plain `http://` to hosts other than loopback
-- @tfield[opt] string ca_file CA certificates for a portal with its own CA
-- @tfield[opt] string ca_path a directory of CA certificates
-- @tfield[opt=true] boolean tls_verify `false` turns certificate checks off (said once on stderr)
-- @tfield[opt] string user_agent the User-Agent header (default `bitrix24-lua/<version>`)
-- @tfield[opt] string proxy a proxy URL (libcurl also reads `https_proxy` and friends)
-- @tfield[opt] number max_response a whole number of bytes in [1, 1 GiB] (default 64 MiB); a larger answer fails with `RESPONSE_TOO_LARGE`
-- @tfield[opt] function on_request `function(info)` before each HTTP request: `method`, `url` (secret removed)
-- @tfield[opt] function on_response `function(info)` after it: `method`, `duration`, `status`, `code`, `operating`
-- @tfield[opt=2] number rate the portal's leaky bucket: requests a second it drains
-- @tfield[opt=50] number burst the bucket's ceiling
-- @tfield[opt="standard"] string plan `"enterprise"` sets rate 5 and burst 250
-- @tfield[opt] table budget where the bucket lives: `file_budget`, `shared_dict_budget`, or any table with `update(key, fn)`
-- @tfield[opt=true] boolean rate_limit `false` turns the client's pacing off
-- @tfield[opt=600] number max_wait the longest wait for a method blocked by its operating time
-- @tfield[opt=900] number deadline seconds a call may take with all its waits and retries
-- @tfield[opt=5] number tries tries per call, the first included
-- @tfield[opt=false] boolean retry_writes also repeat writes after a lost answer
-- @tfield[opt=480] number operating_limit seconds of server time per method per 10 minutes
-- @tfield[opt=1] number parallel the most requests in flight for `calls`, `batch` and `lead_contacts`
-- @tfield[opt] string|table transport `"curl"`, `"nginx"` or an object with `call`, `request` and `close` (default: nginx's cosockets inside nginx, else libcurl)
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
  -- The same bound as the core's (src/http.c): a fraction of a byte
  -- would round down to an answer limit of nothing.
  local max = opts.max_response
  if max ~= nil and (max ~= math.floor(max) or max > 2 ^ 30) then
    return nil, fail("opts.max_response must be a whole number of bytes in [1, 1 GiB]")
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

--- A client for an incoming webhook.
-- @tparam string url the webhook's URL, `https://portal/rest/<user_id>/<code>/`
-- @tparam[opt] table opts see `options`
-- @treturn Client
-- @raise on a malformed URL or a bad option (the message never shows the code)
function M.webhook(url, opts)
  local client, why = webhook(url, opts)
  if not client then errors.raise(2, why) end
  return client
end

--- A client for an OAuth application: tokens go in the request body, never
-- in the URL. An expired token is refreshed once per call, under the
-- store's lock when there is a store.
-- @tparam table cfg `endpoint` (the portal's `/rest/` URL), `access_token`,
-- `refresh_token`, `client_id`, `client_secret`, and optionally `token_url`,
-- `on_refresh` (called with the new tokens), `store` (`file_store`,
-- `shared_dict_store` or a table with `load`, `save` and `lock`) and the TLS
-- options `ca_file`, `ca_path`, `tls_verify`
-- @tparam[opt] table opts see `options`
-- @treturn Client
-- @raise on a bad config or option
function M.oauth(cfg, opts)
  local client, why = oauth(cfg, opts)
  if not client then errors.raise(2, why) end
  return client
end

--- A token store in a JSON file (mode 0600, replaced atomically), safe for
-- the processes of one machine: a refresh takes a lock beside it.
-- @function file_store
-- @tparam string path
-- @treturn table the store, for `oauth`'s `store`
-- @raise when path is not a non-empty string
M.file_store = auth.file_store

--- A token store in an nginx `lua_shared_dict`, shared by every worker.
-- @function shared_dict_store
-- @param dict `ngx.shared.NAME` or NAME
-- @tparam[opt="default"] string key names the token set (apps can share a dict)
-- @treturn table the store, for `oauth`'s `store`
-- @raise when dict is not a shared dict
M.shared_dict_store = auth.shared_dict_store

--- A rate-limit budget in a file, shared by the processes of one machine
-- under an exclusive lock; a corrupt file is repaired (that call gets
-- `BUDGET_ERROR`).
-- @function file_budget
-- @tparam string path
-- @treturn table the budget, for `options`' `budget`
-- @raise when path is not a non-empty string
M.file_budget = limiter.file_budget

--- A rate-limit budget in an nginx `lua_shared_dict`, shared by every worker.
-- @function shared_dict_budget
-- @param dict `ngx.shared.NAME` or NAME
-- @treturn table the budget, for `options`' `budget`
-- @raise when dict is not a shared dict
M.shared_dict_budget = limiter.shared_dict_budget

-- Shared between machines through Redis (docs/many-machines.md): loaded
-- on first use, so the client needs no Redis library until then.

--- A rate-limit budget in Redis, shared by the machines of a portal (one
-- script call a request). While Redis cannot be used it falls back to a
-- local budget (this process's, or nginx's `bitrix24` shared dict) and says
-- so once; with `budget_fallback = false` calls fail with `BUDGET_ERROR`.
-- @param config a `redis://[user:password@]host[:port][/db]` URL, or a table:
-- `url` or `host`, `port`, `user`, `password`, `db`, `prefix`,
-- `connect_timeout`, `read_timeout`, `retry_after`, `keepalive`,
-- `pool_size`, `budget_fallback`, `report` (`function(text)`)
-- @treturn table the budget, for `options`' `budget`
-- @raise on a bad config
function M.redis_budget(config) return require("bitrix24.redis_budget").new(config) end

--- A token store in Redis, with a lock across machines.
-- @param config a `redis://` URL or a table, as `redis_budget`'s
-- @tparam[opt="default"] string key names the token set (apps and portals can share a Redis)
-- @treturn table the store, for `oauth`'s `store`
-- @raise on a bad config
function M.redis_store(config, key) return require("bitrix24.redis_store").new(config, key) end

--- A client from the environment: `BITRIX24_WEBHOOK_URL`, else
-- `BITRIX24_OAUTH_ENDPOINT` with `BITRIX24_OAUTH_ACCESS_TOKEN`,
-- `_REFRESH_TOKEN`, `_CLIENT_ID`, `_CLIENT_SECRET` and `_TOKEN_URL`.
-- @tparam[opt] table opts see `options`
-- @treturn Client the client
-- @return[2] nil
-- @treturn[2] Error `NO_CONFIG` when neither is set
-- @raise on a malformed URL or a bad option
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

--- A client, made by `webhook`, `oauth` or `from_env`. Besides its methods,
-- any dotted REST method can be called as a chain of fields:
-- `client.crm.lead.contact.items.get{ id = 1 }` is
-- `client:call("crm.lead.contact.items.get", { id = 1 })`.
-- @type Client

--- Calls a REST method. Reads are retried after a lost answer; writes are
-- sent once unless `retry_writes`.
-- @tparam string method e.g. `"crm.lead.contact.items.get"`
-- @tparam[opt] table params
-- @return the envelope's `result`
-- @return nil
-- @treturn table the whole envelope (`time`, and `total`, `next` for lists)
-- @return[2] nil
-- @treturn[2] Error when the network or the portal failed
-- @raise on a bad method name, params that cannot be sent, or invalid
-- parameters of a `crm.lead.contact.*` method (nothing is sent)
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

-- Checks client:calls' arguments: returns opts (a table), or nil and why.
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

--- Many calls, up to `opts.parallel` in flight.
-- @tparam {table,...} list `{ { method, params }, ... }`
-- @tparam[opt] table opts `parallel`, `progress` (`function(done, total)`)
-- @treturn table results: `results[i]` is the result of the i-th call
-- @treturn table errs: `errs[i]` the error of the i-th call
-- @raise on a bad list, opts or call (nothing is sent)
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

--- Runs many commands through the `batch` method, 50 to a request, a
-- command after those it references (`$result[key]`).
-- @tparam table commands `{ key = { method, params }, ... }`
-- @tparam[opt] table opts `halt` (stop at the first failing command),
-- `progress` (`function(done, total)`), `parallel` (requests in flight)
-- @treturn table `{ key = { result =, error =, total =, next = }, ... }`
-- @return[2] nil
-- @treturn[2] Error when a request failed (`err.partial`: the results so far)
-- @raise on malformed commands (nothing is sent)
function Client:batch(commands, opts)
  local plan, why = check_client(self, "batch")
  if plan then plan, why = batch.plan(commands, opts) end
  if not plan then errors.raise(2, why) end
  return send_batch(self, plan)
end

--- The contacts of many leads, `crm.lead.contact.items.get` for each, 50 leads
-- to a batch request.
-- @tparam {integer,...} ids lead ids
-- @tparam[opt] table opts `progress` (`function(done, total)`), `parallel`
-- (requests in flight)
-- @treturn table rows by lead id
-- @treturn table errors by lead id
-- @return[2] nil
-- @treturn[2] Error when a request failed
-- @raise on an id that is not a positive integer (nothing is sent)
function Client:lead_contacts(ids, opts)
  local plan, keys = check_client(self, "lead_contacts")
  if plan then plan, keys = batch.plan_lead_contacts(ids, opts) end
  if plan == nil then errors.raise(2, keys) end   -- keys is why here
  if not plan then return {}, {} end              -- no ids: nothing to send
  local results, err = send_batch(self, plan)
  return batch.by_lead(keys, results, err)
end

-- The pipeline request of one of client:each's requests: { method,
-- params } (one plain call) or { batch = { keys, cmd, methods } }.
local function page_request(self, r)
  if r.batch then
    return pipeline.request(self, "batch", batch.body(r.batch.keys, r.batch.cmd, true), r.batch.methods)
  end
  -- Checked with the caller's params: pages only add paging keys.
  local body, bad = json_body(self, r.method, r.params)
  if not body then errors.raise(1, bad) end
  return pipeline.request(self, r.method, body)
end

-- A window of client:each's requests, up to `parallel` in flight (see
-- fanout.window): add(r) queues one, take() returns the oldest answer.
local function page_window(self, parallel)
  local w = fanout.window(self, parallel)
  return {
    add = function(r) w.add(page_request(self, r)) end,
    take = w.take, pump = w.pump, close = w.close,
  }
end

--- Iterates over every row of a list method, in batches of list calls:
-- `for item, err in client:each(method, params, opts) do ... end`.
-- @tparam string method a list method, e.g. `"crm.lead.list"`
-- @tparam[opt] table params
-- @tparam[opt] table opts `fast = true` (by ID, no count, safe under change;
-- default: your order, offset pages), `page_batch` (list calls a request,
-- 1 to 50, default 50), `parallel` (requests in flight), `progress`
-- (`function(count, total)`), `id_key` (default `"ID"`)
-- @treturn function the iterator: each row, or `nil, err` once when a request failed
-- @raise on a bad method name, params or opts (nothing is sent)
function Client:each(method, params, opts)
  local body, checked = prepare(self, "each", method, params)
  local pager, why
  if body then pager, why = paging.new(method, checked, opts, self._parallel) else why = checked end
  if not pager then errors.raise(2, why) end
  return pager:iterator(function() return page_window(self, pager.parallel) end,
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

--- Frees the connection; the client cannot be used afterwards (a call
-- raises). Also `__close` and `__gc`. Called during a fan-out (from a
-- callback), it stops the requests in flight; those not finished end with
-- `CANCELLED`.
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

--- Binds a handler URL to an event (`event.bind`); OAuth clients only.
-- @tparam string event e.g. `"ONCRMLEADUPDATE"`
-- @tparam ?string handler the handler's URL (nil for an offline binding)
-- @tparam[opt] table opts `event_type` (`"online"` or `"offline"`), `auth_type`,
-- `auth_connector`, `options`
-- @return true
-- @return[2] nil
-- @treturn[2] Error
-- @raise with a webhook client or bad arguments (nothing is sent)
function Client:bind(event, handler, opts)
  local body, why = event_body(self, "bind", "event.bind",
    function() return binding.params(self, "bind", event, handler, opts) end)
  if not body then errors.raise(2, why) end
  return send(self, "event.bind", body)
end

--- Removes event bindings (`event.unbind`); OAuth clients only.
-- @tparam string event
-- @tparam ?string handler the handler's URL
-- @tparam[opt] table opts as `bind`'s
-- @treturn table `{ count = n }`
-- @return[2] nil
-- @treturn[2] Error
-- @raise with a webhook client or bad arguments (nothing is sent)
function Client:unbind(event, handler, opts)
  local body, why = event_body(self, "unbind", "event.unbind",
    function() return binding.params(self, "unbind", event, handler, opts) end)
  if not body then errors.raise(2, why) end
  return send(self, "event.unbind", body)
end

--- The app's event bindings (`event.get`); OAuth clients only.
-- @treturn {table,...} `{ event =, handler =, auth_type =, offline = }` each
-- @return[2] nil
-- @treturn[2] Error
-- @raise with a webhook client
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
