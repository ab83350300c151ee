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
Client.__index = Client

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

local function encode(params, method)
  local ok, body = pcall(json.encode, params)
  if not ok then
    errors.raise(3, "%s: params cannot be sent as JSON: %s", method, tostring(body):gsub("^.-: ", ""))
  end
  return body
end

local function send(client, method, params)
  local auth = client._auth
  local body
  if auth.kind == "oauth" then
    local p = {}
    for k, v in pairs(params) do p[k] = v end
    p.auth = auth.access_token
    body = encode(p, method)
  else
    body = encode(params, method)
  end
  return client._http:call(auth.base .. method, body)
end

--- client:call(method, params) -> result, nil, envelope | nil, err
function Client:call(method, params)
  if getmetatable(self) ~= Client then
    errors.raise(1, "call: use client:call(method, params)")
  end
  if type(method) ~= "string" or not method:match("^[%w_]+$") and not method:match("^[%w_][%w_.]*[%w_]$")
      or method:find("..", 1, true) then
    errors.raise(1, "method must be a non-empty string of letters, digits, '_' and '.', got %s",
      type(method) == "string" and string.format("%q", method) or type(method))
  end
  if params == nil then
    params = {}
  elseif type(params) ~= "table" then
    errors.raise(1, "%s: params must be a table or nil, got %s", method, type(params))
  end
  params = methods.validate(method, params, 2)
  if not self._http then errors.raise(1, "call: the client is closed") end

  local env, code, description, status, extra = send(self, method, params)
  if env then return env.result, nil, env end
  if code == "expired_token" and self._auth.kind == "oauth" then
    local ok, err = refresh(self, method)
    if not ok then return nil, err end
    env, code, description, status, extra = send(self, method, params)
    if env then return env.result, nil, env end
  end
  if code == "PORTAL_MOVED" then
    description = description .. " to " .. tostring(extra) .. "; update the client's URL"
  end
  return nil, fail(self._auth, method, code, description, status)
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
