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
local cjson = require "cjson"

local M = {
  _NAME = "bitrix24",
  _VERSION = "0.1.0",
}

local DEFAULT_TOKEN_URL = "https://oauth.bitrix.info/oauth/token/"

-- A private encoder: the caller's cjson settings must not change our
-- request bodies, nor ours theirs.
local json = cjson.new()
json.encode_sparse_array(false)

local Client = {}

local OPTIONS = {
  timeout = "number", connect_timeout = "number", allow_http = "boolean",
  ca_file = "string", ca_path = "string", tls_verify = "boolean",
  user_agent = "string", proxy = "string", max_response = "number",
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
    elseif type(v) ~= want then
      errors.raise(level, "opts.%s must be a %s, got %s", k, want, type(v))
    elseif want == "number" and not (v > 0) then
      errors.raise(level, "opts.%s must be positive", k)
    end
  end
  return opts
end

local function is_loopback(host)
  return host == "localhost" or host == "[::1]" or host:match("^127%.%d+%.%d+%.%d+$") ~= nil
end

-- Splits an http(s) URL into scheme, host (with port) and path, and
-- enforces the plain-HTTP rule: a secret sent in clear text is a secret
-- given away, so http:// is for loopback (tests, the fake portal) unless
-- the caller opts in.
local function check_url(url, name, opts, level)
  if type(url) ~= "string" then
    errors.raise(level, "%s must be a string, got %s", name, type(url))
  end
  local scheme, authority, path = url:match("^(https?)://([^/?#]+)(/[^?#]*)$")
  if not scheme then
    errors.raise(level, "%s must be an http(s) URL ending with '/'", name)
  end
  local host = authority:match("^(%[.-%])") or authority:match("^[^:]*")
  if scheme == "http" and not is_loopback(host) and not opts.allow_http then
    errors.raise(level + 1,
      "%s uses plain http:// to %s; use https:// (or opts.allow_http = true)", name, host)
  end
  if path:sub(-1) ~= "/" then path = path .. "/" end
  return scheme .. "://" .. authority .. path, authority
end

local warned_tls = false

local function new_client(auth, opts)
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
  return setmetatable({ _auth = auth, _opts = opts, _http = core.http(http_opts) }, Client)
end

--- Incoming webhook: https://portal/rest/<user_id>/<code>/
function M.webhook(url, opts)
  opts = check_opts(opts, 2)
  local base = check_url(url, "webhook URL", opts, 2)
  local code = base:match("/rest/%d+/([^/]+)/$")
  if not code then
    errors.raise(1, "webhook URL must look like https://<portal>/rest/<user_id>/<code>/")
  end
  local redacted = base:sub(1, #base - #code - 1) .. "***/"
  return new_client({ kind = "webhook", base = base, shown = redacted, secrets = { code } }, opts)
end

--- OAuth application: tokens go in the request body, never in the URL.
function M.oauth(cfg, opts)
  if type(cfg) ~= "table" then
    errors.raise(1, "oauth config must be a table, got %s", type(cfg))
  end
  opts = check_opts(opts, 2)
  for _, k in ipairs { "access_token", "refresh_token", "client_id", "client_secret" } do
    if cfg[k] ~= nil and (type(cfg[k]) ~= "string" or cfg[k] == "") then
      errors.raise(1, "oauth config: %s must be a non-empty string", k)
    end
  end
  if cfg.access_token == nil then errors.raise(1, "oauth config: access_token is required") end
  if cfg.on_refresh ~= nil and type(cfg.on_refresh) ~= "function" then
    errors.raise(1, "oauth config: on_refresh must be a function")
  end
  local endpoint = check_url(cfg.endpoint, "oauth config: endpoint", opts, 2)
  local token_url = check_url(cfg.token_url or DEFAULT_TOKEN_URL, "oauth config: token_url", opts, 2)
  local auth = {
    kind = "oauth", base = endpoint, shown = endpoint, token_url = token_url,
    access_token = cfg.access_token, refresh_token = cfg.refresh_token,
    client_id = cfg.client_id, client_secret = cfg.client_secret,
    on_refresh = cfg.on_refresh,
  }
  auth.secrets = { cfg.access_token, cfg.refresh_token, cfg.client_secret }
  return new_client(auth, opts)
end

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

local function fail(auth, method, code, description, status)
  return errors.new {
    code = code,
    description = errors.redact(description, auth.secrets),
    status = status,
    method = method,
  }
end

local function urlencode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c)
    return string.format("%%%02X", c:byte())
  end))
end

-- grant_type=refresh_token at the token URL; on success the new tokens
-- replace the old ones in place and go to on_refresh before anything else
-- is sent, so a caller that stores them never loses the rotated one.
local function refresh(client, method)
  local auth = client._auth
  if not (auth.refresh_token and auth.client_id and auth.client_secret) then
    return nil, fail(auth, method, "REFRESH_FAILED",
      "the access token expired and no refresh_token/client_id/client_secret were given; re-authorize the application")
  end
  local url = auth.token_url .. "?grant_type=refresh_token&client_id=" .. urlencode(auth.client_id)
    .. "&client_secret=" .. urlencode(auth.client_secret)
    .. "&refresh_token=" .. urlencode(auth.refresh_token)
  local status, body, description = client._http:request(url)
  if not status then
    return nil, fail(auth, method, body, "token refresh: " .. tostring(description))
  end
  local t = core.json_decode(body)
  if type(t) ~= "table" or t.error or type(t.access_token) ~= "string" then
    local code = type(t) == "table" and type(t.error) == "string" and t.error or "REFRESH_FAILED"
    local why = type(t) == "table" and t.error_description or ("HTTP " .. status)
    return nil, fail(auth, method, code,
      "refreshing the OAuth token failed (" .. tostring(why) .. "); re-authorize the application", status)
  end
  auth.access_token = t.access_token
  auth.refresh_token = t.refresh_token or auth.refresh_token
  local s = auth.secrets
  s[#s + 1] = t.access_token
  s[#s + 1] = t.refresh_token
  if type(t.client_endpoint) == "string" then
    local ok, base = pcall(check_url, t.client_endpoint, "client_endpoint", client._opts, 1)
    if ok then auth.base, auth.shown = base, base end
  end
  if auth.on_refresh then
    auth.on_refresh {
      access_token = t.access_token, refresh_token = t.refresh_token,
      expires = t.expires, expires_in = t.expires_in,
      client_endpoint = t.client_endpoint, server_endpoint = t.server_endpoint,
      member_id = t.member_id, domain = t.domain, scope = t.scope,
    }
  end
  return true
end

-- The JSON body of a call. OAuth's token is added at send time (after a
-- refresh it changes), as the last key, so it wins over a stray "auth".
local function json_body(self, method, params, level)
  local ok, body = pcall(json.encode, params)
  if not ok then
    errors.raise(level, "%s: params cannot be sent as JSON: %s", method,
      (tostring(body):gsub("^.-: ", "")))
  end
  if body:sub(1, 1) ~= "{" and self._auth.kind == "oauth" then
    errors.raise(level, "%s: params must have string keys with OAuth (the token goes beside them)", method)
  end
  return body
end

local function with_auth(body, token)
  if not token then return body end
  local auth = '"auth":' .. json.encode(token)
  if body == "{}" then return "{" .. auth .. "}" end
  return body:sub(1, -2) .. "," .. auth .. "}"
end

-- POSTs a JSON body to a method: the one path every request takes.
-- Refreshes an expired OAuth token once and repeats. Returns the
-- envelope, or nil and an error object.
local function perform(self, method, body)
  local auth, http = self._auth, self._http
  local env, code, description, status, extra = http:call(auth.base .. method, with_auth(body, auth.access_token))
  if env then return env end
  if code == "expired_token" and auth.kind == "oauth" then
    local ok, err = refresh(self, method)
    if not ok then return nil, err end
    env, code, description, status, extra = http:call(auth.base .. method, with_auth(body, auth.access_token))
    if env then return env end
  end
  if code == "PORTAL_MOVED" then
    description = description .. " to " .. tostring(extra) .. "; update the client's URL"
  end
  local err = fail(auth, method, code, description, status)
  if type(extra) == "table" then err.response = extra end
  return nil, err
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

-- level: the frame to blame, counted from call (1: its caller).
local function call(self, method, params, level)
  methods.check_name(method, level + 1)
  params = check_params(method, params, level + 1)
  params = methods.validate(method, params, level + 1)
  local body = json_body(self, method, params, level + 1)
  local env, err = perform(self, method, body)
  if not env then return nil, err end
  return env.result, nil, env
end

--- client:call(method, params) -> result, nil, envelope | nil, err
function Client:call(method, params)
  check_client(self, "call", 2)
  local result, err, env = call(self, method, params, 2)
  return result, err, env
end

--- client:batch(commands, opts) -> results | nil, err
--- commands: { key = { method, params }, ... }; opts.halt, opts.progress.
function Client:batch(commands, opts)
  check_client(self, "batch", 2)
  local plan = batch.plan(commands, opts, 2)
  return batch.run(plan, function(body) return perform(self, "batch", body) end,
    function(code, description, method) return fail(self._auth, method, code, description) end)
end

--- client:lead_contacts(ids, opts) -> rows_by_lead, errors_by_lead | nil, err
function Client:lead_contacts(ids, opts)
  check_client(self, "lead_contacts", 2)
  local plan, keys = batch.plan_lead_contacts(ids, opts, 2)
  if not plan then return {}, {} end
  local results, err = batch.run(plan, function(body) return perform(self, "batch", body) end,
    function(code, description, method) return fail(self._auth, method, code, description) end)
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
    return perform(self, method, json_body(self, method, page_params, 1))
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
function Client:close()
  if self._http then
    self._http:close()
    self._http = nil
  end
end

Client.__close = Client.close

function Client:__tostring()
  return "bitrix24 client (" .. self._auth.kind .. " " .. self._auth.shown .. ")"
end

return M
