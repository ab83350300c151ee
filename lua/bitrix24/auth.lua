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
local stored = require "bitrix24.store"
local fail = errors.message

local json = cjson.new()

local M = { DEFAULT_TOKEN_URL = "https://oauth.bitrix.info/oauth/token/" }

local function is_loopback(host)
  return host == "localhost" or host == "[::1]" or host:match("^127%.%d+%.%d+%.%d+$") ~= nil
end

-- Returns the URL with a trailing "/" and its scheme://authority, or nil
-- and why. Plain
-- http:// is for loopback (tests, the fake portal) unless the caller opts
-- in: a secret sent in clear text is a secret given away.
function M.check_url(url, name, allow_http)
  if type(url) ~= "string" then
    return nil, fail("%s must be a string, got %s", name, type(url))
  end
  local scheme, authority, path = url:match("^(https?)://([^/?#@]+)(/[^?#]*)$")
  if not scheme then
    return nil, fail("%s must be an http(s) URL ending with '/'", name)
  end
  local host = authority:match("^(%[.-%])") or authority:match("^[^:]*")
  if scheme == "http" and not is_loopback(host) and not allow_http then
    return nil, fail("%s uses plain http:// to %s; use https:// (or opts.allow_http = true)", name, host)
  end
  if path:sub(-1) ~= "/" then path = path .. "/" end
  return scheme .. "://" .. authority .. path, scheme .. "://" .. authority
end

-- The credentials of a webhook client, or nil and why.
function M.webhook(url, opts)
  local base, origin = M.check_url(url, "webhook URL", opts.allow_http)
  if not base then return nil, origin end
  local code = base:match("/rest/%d+/([^/]+)/$")
  if not code then
    return nil, fail("webhook URL must look like https://<portal>/rest/<user_id>/<code>/")
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

-- A store holds whatever was written there (by hand, by an older version,
-- half a write): a token set from it is used only when it is one, so a
-- wrong type never reaches a request or an error raised deep inside.
local function check_saved(t, allow_http)
  if type(t) ~= "table" then return nil, "it holds no token set" end
  if type(t.access_token) ~= "string" or t.access_token == "" then
    return nil, "its access_token is not a non-empty string"
  end
  if t.refresh_token ~= nil and (type(t.refresh_token) ~= "string" or t.refresh_token == "") then
    return nil, "its refresh_token is not a non-empty string"
  end
  if t.client_endpoint ~= nil and not M.check_url(t.client_endpoint, "client_endpoint", allow_http) then
    return nil, "its client_endpoint is not a usable URL"
  end
  return t
end

-- The store's own functions may fail in any way (a store is user code):
-- each returns value | nil, err here, and never raises.
-- load -> tokens | nil (empty) | nil, err (unreadable or not a token set).
local function load_store(store, allow_http)
  local ok, t, err = pcall(store.load, store)
  if not ok then return nil, "load failed: " .. tostring(t) end
  if t == nil then return nil, err and tostring(err) or nil end
  local good, why = check_saved(t, allow_http)
  if not good then return nil, why end
  return t
end


-- -> unlock function (a no-op for a store without lock) | nil, err
local function lock_store(store)
  if not store.lock then return function() end end
  local ok, unlock, err = pcall(store.lock, store)
  if not ok then return nil, tostring(unlock) end
  if type(unlock) ~= "function" then return nil, tostring(err) end
  return unlock
end

-- Seeds an empty store with the config's tokens, under the store's lock
-- and only if it is still empty then: another process may have seeded it,
-- refreshed and saved the rotated refresh token meanwhile, and writing the
-- config's (now dead) refresh token over it would cost everyone a manual
-- re-authorization. Returns true | nil, err.
local function seed(auth, allow_http)
  local store = auth.store
  local unlock, err = lock_store(store)
  if not unlock then return nil, "cannot lock it: " .. err end
  local saved, why = load_store(store, allow_http)
  local ok
  if saved then
    auth:adopt(saved, allow_http)
    ok = true
  elseif why then
    ok, err = nil, why
  else
    ok, err = stored.save_to(store, auth:snapshot())
  end
  pcall(unlock)
  return ok, err
end

-- The credentials of an OAuth client, or nil and why.
function M.oauth(cfg, opts)
  for _, k in ipairs(FIELDS) do
    if cfg[k] ~= nil and (type(cfg[k]) ~= "string" or cfg[k] == "") then
      return nil, fail("oauth config: %s must be a non-empty string", k)
    end
  end
  if cfg.on_refresh ~= nil and type(cfg.on_refresh) ~= "function" then
    return nil, fail("oauth config: on_refresh must be a function")
  end
  local store = cfg.store
  if store ~= nil and (type(store) ~= "table" or type(store.load) ~= "function"
      or type(store.save) ~= "function") then
    return nil, fail("oauth config: store must have load and save functions")
  end
  local token_url, bad_url = M.check_url(cfg.token_url or M.DEFAULT_TOKEN_URL,
    "oauth config: token_url", opts.allow_http)
  if not token_url then return nil, bad_url end
  local auth = setmetatable({
    kind = "oauth", token_url = token_url,
    access_token = cfg.access_token, refresh_token = cfg.refresh_token,
    client_id = cfg.client_id, client_secret = cfg.client_secret,
    on_refresh = cfg.on_refresh, store = store, secrets = {},
    -- Tokens this client replaced by newer ones: a store still holding
    -- them is behind (its save failed), and must not be reloaded over
    -- the newer tokens in memory.
    retired = {},
  }, Tokens)
  local endpoint = cfg.endpoint
  -- The store holds the newest tokens (another process may have rotated
  -- them since this config was written). A store that cannot be read or
  -- holds no token set is left as it is (a person may still recover a
  -- refresh token from it); the next refresh reports it.
  local saved, why
  if store then saved, why = load_store(store, opts.allow_http) end
  if saved then
    auth.access_token, auth.refresh_token = saved.access_token, saved.refresh_token or auth.refresh_token
    endpoint = saved.client_endpoint or endpoint
  end
  if auth.access_token == nil then
    return nil, fail("oauth config: access_token is required%s",
      why and (" (the store cannot be used: " .. why .. ")") or "")
  end
  auth.base, auth.origin = M.check_url(endpoint, "oauth config: endpoint", opts.allow_http)
  if not auth.base then return nil, auth.origin end
  auth.shown = auth.base
  auth:remember_secrets()
  if store and not saved and not why then
    local ok, err = seed(auth, opts.allow_http)
    if not ok then return nil, fail("oauth config: store: %s", errors.redact(err, auth.secrets)) end
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

-- Whether a token set from the store is older than what this client holds.
function Tokens:is_stale(saved)
  return self.retired[saved.access_token] or (saved.refresh_token ~= nil and self.retired[saved.refresh_token])
    or false
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
  local status, body = http:request(url)
  if not status then return nil, body.code, "token refresh: " .. tostring(body.description) end
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
  if self.access_token and self.access_token ~= t.access_token then self.retired[self.access_token] = true end
  if t.refresh_token and self.refresh_token and self.refresh_token ~= t.refresh_token then
    self.retired[self.refresh_token] = true
  end
  self.access_token = t.access_token
  self.refresh_token = t.refresh_token or self.refresh_token
  if type(t.client_endpoint) == "string" then
    local base, origin = M.check_url(t.client_endpoint, "client_endpoint", allow_http)
    if base then self.base, self.origin, self.shown = base, origin, base end
  end
  self:remember_secrets()
end

-- What the token endpoint answered, as it goes to on_refresh and the
-- store: the known fields, and only strings and finite numbers (a hostile
-- answer's tables or 1e999 would make the store's JSON encoder raise).
local TOKEN_FIELDS = { "access_token", "refresh_token", "expires", "expires_in", "client_endpoint",
  "server_endpoint", "member_id", "domain", "scope" }

local function token_set(t)
  local out = {}
  for _, k in ipairs(TOKEN_FIELDS) do
    local v = t[k]
    if (type(v) == "string" and v ~= "") or (type(v) == "number" and v == v and v > -math.huge and v < math.huge
        and k ~= "access_token" and k ~= "refresh_token") then
      out[k] = v
    end
  end
  return out
end

local function refresh_locked(self, http, used, allow_http)
  local store = self.store
  if store then
    local saved, why = load_store(store, allow_http)
    if why then
      -- It may hold a newer refresh token than ours: overwriting it, or
      -- refreshing without knowing, could lose that one for good.
      return nil, "STORE_ERROR", "cannot use the token store (" .. why .. "); nothing was refreshed: "
        .. "fix or remove it"
    end
    if saved and not self:is_stale(saved) then
      if saved.access_token ~= used then
        -- Another process refreshed while we waited for the lock.
        self:adopt(saved, allow_http)
        return true
      end
      if saved.refresh_token then self.refresh_token = saved.refresh_token end
    end
    -- (A stale store, one whose save failed earlier, is simply overwritten
    -- below with the newer tokens this client holds.)
  end
  local t, code, description, status = ask_token_endpoint(self, http)
  if not t then return nil, code, description, status end
  local tokens = token_set(t)
  self:adopt(tokens, allow_http)
  -- on_refresh first, whatever the store does: it is the caller's own
  -- copy of the rotated refresh token, and the only one if the store
  -- fails. A raising on_refresh is a bug in the caller: raised, but only
  -- after the store has the tokens.
  local hook_ok, hook_err = true, nil
  if self.on_refresh then hook_ok, hook_err = pcall(self.on_refresh, tokens) end
  local saved, err = true, nil
  if store then saved, err = stored.save_to(store, tokens) end
  if not hook_ok then error(hook_err, 0) end
  if not saved then
    return nil, "STORE_ERROR", "the token was refreshed but the store could not save it ("
      .. err .. "); this client keeps the new tokens and will save them at its next refresh"
      .. (self.on_refresh and ", and they went to on_refresh" or "")
  end
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
  if self.store then
    local err
    unlock, err = lock_store(self.store)
    if not unlock then
      self.refreshing = false
      return nil, "STORE_ERROR", "cannot lock the token store: " .. err
    end
  end
  local ok, a, b, c, d = pcall(refresh_locked, self, http, used, allow_http)
  if unlock then pcall(unlock) end
  self.refreshing = false
  if not ok then error(a, 0) end
  return a, b, c, d
end

-- The tokens as a store keeps them, or nil and why.
local function encode(tokens)
  local ok, text = pcall(json.encode, tokens)
  if not ok then return nil, "cannot encode the tokens: " .. tostring(text) end
  return text
end

--- A token store in a file, safe for several processes on one machine:
--- refreshes take a lock beside it, and writes replace it atomically
--- (mode 0600).
function M.file_store(path)
  if type(path) ~= "string" or path == "" then
    errors.raise(2, "file_store: path must be a non-empty string")
  end
  -- (saves are rare: each cleans up after killed writers)
  local file = stored.file(path, "always")
  return {
    path = path,
    -- A missing file is an empty store; one that cannot be read or is
    -- not a JSON object is an error, not "empty" (seeding over it would
    -- destroy a refresh token a person might still recover).
    load = function()
      local there, t = file:read()
      if there == nil then return nil, t end
      if not there then return nil end
      if type(t) ~= "table" then return nil, path .. " is not a JSON object" end
      return t
    end,
    save = function(_, tokens)
      local text, err = encode(tokens)
      if not text then return nil, err end
      return file:write(text)
    end,
    lock = function() return file:lock() end,
  }
end

--- A token store in an nginx lua_shared_dict, shared by every worker:
--- with it, clients in any worker (even one per request) refresh once
--- between them. dict: ngx.shared.NAME or NAME; key names the token set
--- (several apps can share a dict).
function M.shared_dict_store(dict, key)
  local why
  dict, why = stored.resolve(dict, "shared_dict_store")
  if not dict then errors.raise(2, why) end
  local name = "bitrix24:tokens:" .. tostring(key or "default")
  -- The lock is held across the token request, so it expires after 30 s
  -- in case the worker holding it dies.
  local entry = stored.dict(dict, name, name .. ":lock", 30, 30, 0.005)
  return {
    load = function()
      local there, t = entry:read()
      if not there then return nil end
      if type(t) ~= "table" then return nil, "the shared dict's " .. name .. " is not a JSON object" end
      return t
    end,
    save = function(_, tokens)
      local text, err = encode(tokens)
      if not text then return nil, err end
      return entry:write(text)
    end,
    lock = function() return entry:lock() end,
  }
end

return M
