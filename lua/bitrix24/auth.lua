-- Where the credentials go, and keeping OAuth tokens alive.
--
-- A webhook carries its secret in the URL path; OAuth sends the access
-- token in the body. The refresh rules come from Bitrix24's docs (FACTS §8):
-- refresh only after a call answers 401 expired_token, never on a timer;
-- every refresh rotates the refresh token, so the new pair must be stored
-- before anything else happens, and two refreshes must never race (the
-- loser would present an already rotated refresh token and the app would
-- need re-authorization by hand).

local core = require "bitrix24.core"
local cjson = require "cjson"
local errors = require "bitrix24.errors"
local shared_dict = require "bitrix24.shared_dict"

local json = cjson.new()

local M = { DEFAULT_TOKEN_URL = "https://oauth.bitrix.info/oauth/token/" }

local function is_loopback(host)
  return host == "localhost" or host == "[::1]" or host:match("^127%.%d+%.%d+%.%d+$") ~= nil
end

-- Returns the URL with a trailing "/" and its scheme://authority. Plain
-- http:// is for loopback (tests, the fake portal) unless the caller opts
-- in: a secret sent in clear text is a secret given away.
function M.check_url(url, name, allow_http, level)
  if type(url) ~= "string" then
    errors.raise(level, "%s must be a string, got %s", name, type(url))
  end
  local scheme, authority, path = url:match("^(https?)://([^/?#@]+)(/[^?#]*)$")
  if not scheme then
    errors.raise(level, "%s must be an http(s) URL ending with '/'", name)
  end
  local host = authority:match("^(%[.-%])") or authority:match("^[^:]*")
  if scheme == "http" and not is_loopback(host) and not allow_http then
    errors.raise(level, "%s uses plain http:// to %s; use https:// (or opts.allow_http = true)", name, host)
  end
  if path:sub(-1) ~= "/" then path = path .. "/" end
  return scheme .. "://" .. authority .. path, scheme .. "://" .. authority
end

function M.webhook(url, opts, level)
  local base, origin = M.check_url(url, "webhook URL", opts.allow_http, level + 1)
  local code = base:match("/rest/%d+/([^/]+)/$")
  if not code then
    errors.raise(level, "webhook URL must look like https://<portal>/rest/<user_id>/<code>/")
  end
  return {
    kind = "webhook", base = base, origin = origin,
    shown = base:sub(1, #base - #code - 1) .. "***/",
    secrets = { code },
  }
end

local Tokens = {}
Tokens.__index = Tokens

local FIELDS = { "access_token", "refresh_token", "client_id", "client_secret" }

function M.oauth(cfg, opts, level)
  for _, k in ipairs(FIELDS) do
    if cfg[k] ~= nil and (type(cfg[k]) ~= "string" or cfg[k] == "") then
      errors.raise(level, "oauth config: %s must be a non-empty string", k)
    end
  end
  if cfg.on_refresh ~= nil and type(cfg.on_refresh) ~= "function" then
    errors.raise(level, "oauth config: on_refresh must be a function")
  end
  local store = cfg.store
  if store ~= nil and (type(store) ~= "table" or type(store.load) ~= "function"
      or type(store.save) ~= "function") then
    errors.raise(level, "oauth config: store must have load and save functions")
  end
  local auth = setmetatable({
    kind = "oauth", token_url = M.check_url(cfg.token_url or M.DEFAULT_TOKEN_URL,
      "oauth config: token_url", opts.allow_http, level + 1),
    access_token = cfg.access_token, refresh_token = cfg.refresh_token,
    client_id = cfg.client_id, client_secret = cfg.client_secret,
    on_refresh = cfg.on_refresh, store = store, secrets = {},
  }, Tokens)
  local endpoint = cfg.endpoint
  -- The store holds the newest tokens (another process may have rotated
  -- them since this config was written); an empty store is seeded.
  local saved = store and store:load()
  if type(saved) == "table" and type(saved.access_token) == "string" then
    auth.access_token, auth.refresh_token = saved.access_token, saved.refresh_token or auth.refresh_token
    endpoint = saved.client_endpoint or endpoint
  end
  if auth.access_token == nil then errors.raise(level, "oauth config: access_token is required") end
  auth.base, auth.origin = M.check_url(endpoint, "oauth config: endpoint", opts.allow_http, level + 1)
  auth.shown = auth.base
  auth:remember_secrets()
  if store and saved == nil then
    local ok, err = store:save(auth:snapshot())
    if not ok then errors.raise(level, "oauth config: store: %s", tostring(err)) end
  end
  return auth
end

function Tokens:remember_secrets()
  local s = self.secrets
  for _, k in ipairs { "access_token", "refresh_token", "client_secret" } do
    if self[k] then s[#s + 1] = self[k] end
  end
end

function Tokens:snapshot(extra)
  local t = {
    access_token = self.access_token, refresh_token = self.refresh_token,
    client_endpoint = self.base,
  }
  for k, v in pairs(extra or {}) do t[k] = v end
  return t
end

local function urlencode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c)
    return string.format("%%%02X", c:byte())
  end))
end

-- One grant_type=refresh_token request. Returns the decoded answer, or
-- nil, code, description, status.
local function ask_token_endpoint(self, http)
  if not (self.refresh_token and self.client_id and self.client_secret) then
    return nil, "REFRESH_FAILED", "the access token expired and no refresh_token, "
      .. "client_id and client_secret were given; re-authorize the application"
  end
  local url = self.token_url .. "?grant_type=refresh_token&client_id=" .. urlencode(self.client_id)
    .. "&client_secret=" .. urlencode(self.client_secret)
    .. "&refresh_token=" .. urlencode(self.refresh_token)
  local status, body, description = http:request(url)
  if not status then return nil, body, "token refresh: " .. tostring(description) end
  local t = core.json_decode(body)
  if type(t) ~= "table" or t.error or type(t.access_token) ~= "string" then
    local code = type(t) == "table" and type(t.error) == "string" and t.error or "REFRESH_FAILED"
    local why = type(t) == "table" and t.error_description or ("HTTP " .. status)
    return nil, code, "refreshing the OAuth token failed (" .. tostring(why)
      .. "); re-authorize the application", status
  end
  return t
end

-- Takes the new tokens in and hands them to the store and on_refresh.
function Tokens:adopt(t, allow_http)
  self.access_token = t.access_token
  self.refresh_token = t.refresh_token or self.refresh_token
  if type(t.client_endpoint) == "string" then
    local ok, base, origin = pcall(M.check_url, t.client_endpoint, "client_endpoint", allow_http, 1)
    if ok then self.base, self.origin, self.shown = base, origin, base end
  end
  self:remember_secrets()
end

local function refresh_locked(self, http, used, allow_http)
  local store = self.store
  if store then
    local saved = store:load()
    if type(saved) == "table" and saved.access_token and saved.access_token ~= used then
      -- Another process refreshed while we waited for the lock.
      self:adopt(saved, allow_http)
      return true
    end
    if type(saved) == "table" and saved.refresh_token then self.refresh_token = saved.refresh_token end
  end
  local t, code, description, status = ask_token_endpoint(self, http)
  if not t then return nil, code, description, status end
  self:adopt(t, allow_http)
  local tokens = {
    access_token = t.access_token, refresh_token = t.refresh_token,
    expires = t.expires, expires_in = t.expires_in,
    client_endpoint = t.client_endpoint, server_endpoint = t.server_endpoint,
    member_id = t.member_id, domain = t.domain, scope = t.scope,
  }
  if store then
    local ok, err = store:save(tokens)
    if not ok then
      return nil, "STORE_ERROR", "the token was refreshed but the store could not save it ("
        .. tostring(err) .. "); the new tokens went to on_refresh"
    end
  end
  if self.on_refresh then self.on_refresh(tokens) end
  return true
end

-- Called after `used` (the access token a call sent) got expired_token.
-- Returns true when the call may be repeated with self.access_token, or
-- nil, code, description, status. sleep(s) waits without blocking others
-- (ngx.sleep in nginx, where calls of one worker interleave).
function Tokens:refresh(http, used, allow_http, sleep)
  local waited = 0
  while self.refreshing and waited < 60 do
    sleep(0.01)
    waited = waited + 0.01
  end
  if self.access_token ~= used then return true end
  self.refreshing = true
  local unlock
  if self.store and self.store.lock then
    local err
    unlock, err = self.store:lock()
    if not unlock then
      self.refreshing = false
      return nil, "STORE_ERROR", "cannot lock the token store: " .. tostring(err)
    end
  end
  local ok, a, b, c, d = pcall(refresh_locked, self, http, used, allow_http)
  if unlock then unlock() end
  self.refreshing = false
  if not ok then error(a, 0) end
  return a, b, c, d
end

--- A token store in a file, safe for several processes on one machine:
--- refreshes take a lock beside it, and writes replace it atomically
--- (mode 0600).
function M.file_store(path)
  if type(path) ~= "string" or path == "" then
    errors.raise(1, "file_store: path must be a non-empty string")
  end
  return {
    path = path,
    load = function()
      local f = io.open(path, "rb")
      if not f then return nil end
      local text = f:read("*a")
      f:close()
      local t = core.json_decode(text)
      if type(t) ~= "table" then return nil end
      return t
    end,
    save = function(_, tokens)
      return core.write_file(path, json.encode(tokens))
    end,
    lock = function()
      local lock, err = core.lock(path .. ".lock", 60)
      if not lock then return nil, err end
      return function() lock:unlock() end
    end,
  }
end

--- A token store in an nginx lua_shared_dict, shared by every worker:
--- with it, clients in any worker (even one per request) refresh once
--- between them. dict: ngx.shared.NAME or NAME; key names the token set
--- (several apps can share a dict).
function M.shared_dict_store(dict, key)
  dict = shared_dict.resolve(dict, "shared_dict_store", 1)
  local name = "bitrix24:tokens:" .. tostring(key or "default")
  return {
    load = function()
      local raw = dict:get(name)
      local t = type(raw) == "string" and core.json_decode(raw)
      return type(t) == "table" and t or nil
    end,
    save = function(_, tokens)
      return dict:set(name, json.encode(tokens))
    end,
    -- Held across the token request, so it expires after 30 s in case the
    -- worker holding it dies.
    lock = function()
      return shared_dict.lock(dict, name .. ":lock", 30, 30, 0.005)
    end,
  }
end

return M
