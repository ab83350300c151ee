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
-- @tfield[opt] number max_response bytes (default 64 MiB); a larger answer fails with `RESPONSE_TOO_LARGE`
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
-- @tfield[opt] string|table transport `"curl"`, `"nginx"` or an object with `call`, `request` and `close` (default: nginx's cosockets inside nginx, else libcurl)
local OPTIONS = {
  timeout = "number", connect_timeout = "number", allow_http = "boolean",
  ca_file = "string", ca_path = "string", tls_verify = "boolean",
  user_agent = "string", proxy = "string", max_response = "number",
  on_request = "function", on_response = "function",
  rate = "number", burst = "number", plan = "string", budget = "table", rate_limit = "boolean",
  max_wait = "number", deadline = "number", tries = "number", retry_writes = "boolean",
  operating_limit = "number", transport = "any",
}

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
      return nil, fail("opts.%s must be positive", k)
    end
  end
  if opts.plan ~= nil and not limiter.PLANS[opts.plan] then
    return nil, fail('opts.plan must be "standard" or "enterprise", got %q', opts.plan)
  end
  if opts.budget ~= nil and type(opts.budget.update) ~= "function" then
    return nil, fail("opts.budget must have an update function (see bitrix24.file_budget)")
  end
  local t = opts.transport
  if t ~= nil and t ~= "curl" and t ~= "nginx" and not (type(t) == "table" and type(t.call) == "function"
      and type(t.request) == "function" and type(t.close) == "function") then
    return nil, fail('opts.transport must be "curl", "nginx" or an object with call, request and close')
  end
  if opts.tries ~= nil and opts.tries ~= math.floor(opts.tries) then
    return nil, fail("opts.tries must be a whole number")
  end
  return opts
end

-- Plain Lua blocks in a real sleep; inside nginx, ngx.sleep lets the
-- worker serve others meanwhile.
local function environment()
  local ngx = rawget(_G, "ngx")
  if type(ngx) == "table" and type(ngx.sleep) == "function" then
    return { sleep = ngx.sleep, now = function() ngx.update_time(); return ngx.now() end }
  end
  return { sleep = core.sleep, now = core.now }
end

local warned_tls = false

-- Inside nginx (ngx_lua) a blocking libcurl call would stall every request
-- the worker serves, so requests go through nginx's cosockets there.
-- opts.transport: "curl", "nginx", or an object with the same methods as
-- core.http's handle (call, request, close).
local function open_transport(opts, http_opts)
  local kind = opts.transport
  if kind == nil then
    local ngx = rawget(_G, "ngx")
    kind = type(ngx) == "table" and type(ngx.socket) == "table" and type(ngx.get_phase) == "function"
      and "nginx" or "curl"
  end
  if kind == "curl" then return core.http(http_opts) end
  if kind == "nginx" then return require("bitrix24.transport.nginx").new(http_opts) end
  return kind
end

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
  local env = environment()
  return setmetatable({
    _auth = credentials, _opts = opts, _http = open_transport(opts, http_opts), _env = env,
    _limiter = limiter.new(credentials.origin, opts, env),
  }, Client)
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

-- The JSON body of a call. OAuth's token is added at send time (after a
-- refresh it changes), as the last key, so it wins over a stray "auth".
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

local function with_auth(body, token)
  if not token then return body end
  local auth = '"auth":' .. core.json_encode(token)
  if body == "{}" then return "{" .. auth .. "}" end
  return body:sub(1, -2) .. "," .. auth .. "}"
end

local MAX_REDIRECTS = 3

-- Where a redirect may be followed: the same scheme, host and port. A
-- portal that moved to another host must not receive our secrets from a
-- redirect; the caller updates the URL instead.
local function same_origin(a, location)
  if type(location) ~= "string" then return nil end
  local origin = location:match("^(https?://[^/?#]+)")
  return origin and origin:lower() == a.origin:lower()
end

local TLS_HINT = "; if the portal's certificate comes from its own CA, pass opts.ca_file"
  .. " (or opts.ca_path) with that CA"

local function final_error(a, method, code, description, status, extra, tries)
  if code == "PORTAL_MOVED" and type(extra) ~= "string" then
    description = description .. " with no Location header: the portal does not say where it went"
  elseif code == "PORTAL_MOVED" then
    description = description .. " to " .. extra .. "; update the client's URL"
  elseif code == "TLS_ERROR" and not description:find("lua_ssl_trusted_certificate", 1, true) then
    -- (the nginx transport names its own remedy: opts.ca_file has no effect there)
    description = description .. TLS_HINT
  end
  if tries > 1 then description = description .. " (after " .. tries .. " tries)" end
  local err = fail_error(a, method, code, description, status)
  err.tries = tries
  -- The raw envelope may echo what was sent (a token, the webhook code).
  if type(extra) == "table" then err.response = errors.redact_all(extra, a.secrets) end
  return err
end

-- POSTs a JSON body to a method: the one path every request takes.
-- Waits for the rate limit, follows same-host redirects with the same
-- POST, refreshes an expired OAuth token once, and retries what is safe
-- to retry (safe: the request changes nothing, or the caller allows
-- repeats) within the deadline. Returns the envelope, or nil and an
-- error object.
local function perform(self, method, body, safe)
  local a, http, opts, lim, env = self._auth, self._http, self._opts, self._limiter, self._env
  local url, redirects, refreshed, tries = a.base .. method, 0, false, 0
  local deadline = env.now() + lim.deadline
  local key = methods.check_name(method)   -- checked already: the lower-case name
  while true do
    local ok, c, d = lim:acquire(key, deadline)
    if not ok then return nil, final_error(a, method, c, d, nil, nil, math.max(tries, 1)) end
    tries = tries + 1
    local token = a.access_token
    if opts.on_request then
      -- The URL really requested (after a redirect, where it went), shown
      -- without its secret.
      local shown = url:sub(1, #a.base) == a.base and a.shown .. url:sub(#a.base + 1) or url
      opts.on_request { method = method, url = errors.redact(shown, a.secrets) }
    end
    local started = opts.on_response and core.monotonic()
    -- The attempt ends by the deadline too: the transport takes the smaller
    -- of its own timeout and what is left (at least a moment, so it can say
    -- TIMEOUT). A request that is not safe to repeat is marked a write, so
    -- the transport never sends it twice on its own.
    local left = math.max(deadline - env.now(), 0.001)
    local result, status, code, description, extra = http:call(url, with_auth(body, token), left, not safe)
    if not result then
      local f = status
      status, code, description, extra = f.status, f.code, f.description, f.envelope or f.location
    end
    if opts.on_response then
      opts.on_response {
        method = method, duration = core.monotonic() - started, status = status,
        code = code, operating = result and type(result.time) == "table" and result.time.operating or nil,
      }
    end
    if result then
      lim:observe(key, result)
      return result
    end
    local retry
    if code == "expired_token" and a.kind == "oauth" and not refreshed then
      refreshed = true
      local done, rc, rd, rs = a:refresh(http, token, opts.allow_http, env.sleep)
      if not done then return nil, final_error(a, method, rc, rd, rs, nil, tries) end
      url = a.base .. method
    elseif code == "PORTAL_MOVED" and same_origin(a, extra) and redirects < MAX_REDIRECTS then
      redirects = redirects + 1
      url = extra
    else
      retry = tries < lim.tries and lim:should_retry(code, status, safe)
      local now = env.now()
      local wait = retry == "operating" and lim:blocked_for(key, now, tries) or retry and lim:backoff(tries)
      if retry == "operating" and (wait > lim.max_wait or now + wait > deadline) then
        description = string.format("%s; %s unblocks at %s (in %.0f s)", description, method,
          os.date("!%Y-%m-%d %H:%M:%S UTC", math.floor(now + wait)), wait)
        retry = false
      end
      if not retry or now + wait + limiter.MIN_TRY > deadline then
        return nil, final_error(a, method, code, description, status, extra, tries)
      end
      env.sleep(wait)
    end
  end
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

local function send(self, method, body)
  local env, err = perform(self, method, body, self._opts.retry_writes or limiter.is_read(method))
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

--- Runs many commands through the `batch` method, 50 to a request, a
-- command after those it references (`$result[key]`).
-- @tparam table commands `{ key = { method, params }, ... }`
-- @tparam[opt] table opts `halt` (stop at the first failing command),
-- `progress` (`function(done, total)`)
-- @treturn table `{ key = { result =, error =, total =, next = }, ... }`
-- @return[2] nil
-- @treturn[2] Error when a request failed (`err.partial`: the results so far)
-- @raise on malformed commands (nothing is sent)
function Client:batch(commands, opts)
  local plan, why = check_client(self, "batch")
  if plan then plan, why = batch.plan(commands, opts) end
  if not plan then errors.raise(2, why) end
  return batch.run(plan, function(body) return perform(self, "batch", body, plan.reads_only) end,
    function(code, description, method) return fail_error(self._auth, method, code, description) end)
end

--- The contacts of many leads, `crm.lead.contact.items.get` for each, 50 leads
-- to a batch request.
-- @tparam {integer,...} ids lead ids
-- @tparam[opt] table opts `progress` (`function(done, total)`)
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
  local results, err = batch.run(plan, function(body) return perform(self, "batch", body, true) end,
    function(code, description, method) return fail_error(self._auth, method, code, description) end)
  return batch.by_lead(keys, results, err)
end

--- Iterates over every row of a list method, page after page:
-- `for item, err in client:each(method, params, opts) do ... end`.
-- @tparam string method a list method, e.g. `"crm.lead.list"`
-- @tparam[opt] table params
-- @tparam[opt] table opts `fast = true`: pages by `>ID` with `start = -1`
-- (no count), for big exports
-- @treturn function the iterator: each row, or `nil, err` once when a page failed
-- @raise on a bad method name, params or opts (nothing is sent)
function Client:each(method, params, opts)
  local body, checked = prepare(self, "each", method, params)
  local pager, why
  if body then pager, why = paging.new(method, checked, opts) else why = checked end
  if not pager then errors.raise(2, why) end
  return pager:iterator(function(page_params)
    -- Checked above with the caller's params: pages only add paging keys.
    local page_body, bad = json_body(self, method, page_params)
    if not page_body then errors.raise(1, bad) end
    return perform(self, method, page_body, true)
  end)
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

local CLIENT_METHODS = { "batch", "bind", "call", "close", "each", "event_bindings", "lead_contacts", "unbind" }

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
-- raises). Also `__close` and `__gc`.
function Client:close()
  if self._http then
    self._http:close()
    self._http = nil
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
