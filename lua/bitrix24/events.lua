--- Receiving Bitrix24 events (FACTS §12): parse the POSTed body, verify it
-- came from the portal, answer at once, then run the user's function.
--
--     local events = require "bitrix24.events"
--     -- in nginx:
--     events.handle{ store = events.file_stores("/var/lib/app/b24"), client_id = ..., client_secret = ...,
--                    install = { domains = { "example.bitrix24.com" } },
--                    on = { ONCRMLEADUPDATE = function(event, client) ... end } }
--     -- any other HTTP server:
--     local status, job = events.receive(cfg, body, content_type)
--     -- answer `status` (empty body), close the response, then: if job then job() end
--
-- Per portal (`auth[member_id]`) two stores, made by `cfg.store(name)`:
--
--     store(member_id)           the OAuth tokens ONAPPINSTALL brought: the
--                                same store bitrix24.oauth{ store = ... } uses,
--                                so refreshes are shared as everywhere else;
--     store(member_id .. ".app") { application_token, domain, client_endpoint,
--                                member_id }: what events are verified against.
--
-- They are separate because a refresh saves a whole new token set over the
-- first store. `member_id` comes from the request, so it must look like one
-- (hex digits, at most 64) before it names a file or key.
--
-- Trust (FACTS §12.2): every event but the first install is checked
-- against the `application_token` stored for its `member_id`, in constant
-- time. ONAPPINSTALL for a portal with no stored token cannot be checked
-- that way; it is accepted only when `cfg.install` lists its domain, its
-- `client_endpoint` is that domain's /rest/, and the token endpoint, asked
-- to renew its `refresh_token`, says those tokens belong to that `member_id`
-- and endpoint (bitrix24.events.install). That needs `cfg.client_id` and
-- `cfg.client_secret`: without them, or without `cfg.install`, no portal can
-- install itself: safe by default. ONAPPUNINSTALL, once verified, empties
-- both stores. An outgoing webhook (no app) is verified against
-- `cfg.webhook_token` instead, and needs no store.
-- @module bitrix24.events

local parse = require "bitrix24.events.parse"
local trust = require "bitrix24.events.install"
local errors = require "bitrix24.errors"
local stored = require "bitrix24.store"

local fail = errors.message

local M = {
  parse = function(body, content_type, opts) return parse.parse(body, content_type, opts) end,
  DEFAULT_LIMITS = parse.DEFAULTS,
}

--- Whether `given` equals `expected`, in time that depends only on the
-- length of `expected` (no early exit at the first differing byte).
-- @tparam string expected
-- @tparam string given
-- @treturn boolean false also when either is not a non-empty string
function M.same_token(expected, given)
  if type(expected) ~= "string" or type(given) ~= "string" or expected == "" or given == "" then
    return false
  end
  local diff, n = (#expected == #given) and 0 or 1, #given
  for i = 1, #expected do
    local d = expected:byte(i) - given:byte((i - 1) % n + 1)
    diff = diff + d * d
  end
  return diff == 0
end

--- The `store` of a `config`: one `bitrix24.file_store` per name in dir.
-- @tparam string dir
-- @treturn function `name -> store`
-- @raise when dir is not a non-empty string
function M.file_stores(dir)
  if type(dir) ~= "string" or dir == "" then errors.raise(2, "events.file_stores: dir must be a non-empty string") end
  local bitrix24 = require "bitrix24"
  return function(name) return bitrix24.file_store(dir .. "/" .. name .. ".json") end
end

--- The `store` of a `config`: one key per name in a `lua_shared_dict`.
-- @param dict `ngx.shared.NAME` or NAME
-- @treturn function `name -> store`
function M.shared_dict_stores(dict)
  local bitrix24 = require "bitrix24"
  return function(name) return bitrix24.shared_dict_store(dict, name) end
end

--- The config of `handle` and `receive`; a wrong key or type raises.
-- @table config
-- @tfield function store `name -> store` (`file_stores`, `shared_dict_stores`
-- or your own); or else `webhook_token`
-- @tfield string webhook_token the application token of a local outgoing webhook
-- @tfield table on event name (any case) -> `function(event, client)`, run
-- after the answer has gone
-- @tfield table install `{ domains = {...} }`: the portals allowed to install the app
-- @tfield string client_id the app's, for the portal's client
-- @tfield string client_secret the app's, for the portal's client
-- @tfield string token_url for the portal's client
-- @tfield table client_opts the `options` of the portal's client
-- @tfield table client one client to hand to `on` instead of the portal's
-- @tfield table limits `max_size`, `max_fields`, `max_depth` of the parser
-- @tfield function log takes each message (default `ngx.log` at ERR, or stderr)
-- @tfield function on_refresh gets every token set the token endpoint hands
-- out (an install's renewal, each portal client's refresh) before any store
local CFG = {
  store = "function", on = "table", webhook_token = "string", install = "table", client_id = "string",
  client_secret = "string", token_url = "string", client_opts = "table", limits = "table", log = "function",
  client = "table", on_refresh = "function",
}

-- true | nil, why (a programmer error: the caller raises it).
local function check_cfg(cfg)
  if type(cfg) ~= "table" then return nil, fail("events: cfg must be a table, got %s", type(cfg)) end
  for k, v in pairs(cfg) do
    if not CFG[k] then return nil, fail("events: unknown cfg.%s", k) end
    if type(v) ~= CFG[k] then return nil, fail("events: cfg.%s must be a %s, got %s", k, CFG[k], type(v)) end
  end
  if not cfg.store and not cfg.webhook_token then
    return nil, fail("events: cfg.store (per-portal stores) or cfg.webhook_token is required")
  end
  for name, fn in pairs(cfg.on or {}) do
    if type(name) ~= "string" or type(fn) ~= "function" then
      return nil, fail("events: cfg.on must map event names to functions")
    end
  end
  if cfg.install then
    local d = cfg.install.domains
    if type(d) ~= "table" or #d == 0 then
      return nil, fail("events: cfg.install.domains must be a non-empty list of portal domains")
    end
  end
  return true
end

local function log(cfg, msg)
  if cfg.log then return pcall(cfg.log, msg) end
  local ngx = rawget(_G, "ngx")
  if type(ngx) == "table" and ngx.log then return ngx.log(ngx.ERR, msg) end
  io.stderr:write(msg, "\n")
end

-- Bitrix24's member_id is 32 hex digits; hex only also keeps a forged one
-- from naming another file (or a "..") in the stores' directory.
local function valid_member(id)
  return type(id) == "string" and #id <= 64 and id:match("^%x+$") ~= nil
end

-- load through pcall: a store is user code. -> table | nil | nil, err
local function load(store)
  local ok, t, err = pcall(store.load, store)
  if not ok then return nil, tostring(t) end
  if t == nil and err ~= nil then return nil, tostring(err) end
  return type(t) == "table" and t or nil
end


-- The two stores of a portal (see the top of the file).
local function stores(cfg, member_id)
  local ok, tokens, app = pcall(function() return cfg.store(member_id), cfg.store(member_id .. ".app") end)
  if not ok then return nil, nil, "cfg.store(" .. member_id .. ") raised: " .. tostring(tokens) end
  if type(tokens) ~= "table" or type(app) ~= "table" then
    return nil, nil, "cfg.store(" .. member_id .. ") did not give a store"
  end
  return tokens, app
end

local TOKEN_KEYS = { "access_token", "refresh_token", "expires", "expires_in", "scope", "domain",
  "server_endpoint", "client_endpoint", "member_id", "status" }

local function install(cfg, auth, tokens_store, app_store, known)
  if type(auth.application_token) ~= "string" or auth.application_token == "" then
    return 400, "ONAPPINSTALL without an application_token"
  end
  local tokens = {}
  if known and M.same_token(known.application_token, auth.application_token) then
    -- A reinstall the stored token vouches for: its tokens as they came.
    for _, k in ipairs(TOKEN_KEYS) do
      if type(auth[k]) == "string" and auth[k] ~= "" then tokens[k] = auth[k] end
    end
  else
    if not cfg.install then return 401, "ONAPPINSTALL refused: cfg.install is not set" end
    if known and known.domain and known.domain ~= auth.domain then
      return 401, "ONAPPINSTALL for a known member_id from another domain"
    end
    local status, why
    tokens, status, why = trust.verify(cfg, auth, function(msg) log(cfg, msg) end)
    if not tokens then return status, why end
  end
  -- The tokens first: the install's own are dead once verify renewed
  -- them, and an app token without tokens would accept events for a
  -- portal we cannot call.
  local ok, err = stored.save_to(tokens_store, tokens)
  if ok then
    ok, err = stored.save_to(app_store, { application_token = auth.application_token, domain = auth.domain,
      client_endpoint = auth.client_endpoint, member_id = auth.member_id })
  end
  if not ok then return 500, "ONAPPINSTALL: the store failed: " .. errors.redact(err, { auth.access_token,
    auth.refresh_token, auth.application_token, tokens.access_token, tokens.refresh_token }) end
  return 200
end

-- The client handed to the user's function: OAuth with the portal's
-- stored tokens (nil when it has none, e.g. an outgoing webhook).
local function portal_client(cfg, member_id, tokens_store, record)
  if cfg.client then return cfg.client end
  if not tokens_store then return nil end
  local saved = load(tokens_store)
  if not (saved and saved.access_token) then return nil end
  local bitrix24 = require "bitrix24"
  local ok, client = pcall(bitrix24.oauth, {
    endpoint = saved.client_endpoint or record.client_endpoint, store = tokens_store,
    client_id = cfg.client_id, client_secret = cfg.client_secret, token_url = cfg.token_url,
    on_refresh = cfg.on_refresh,
  }, cfg.client_opts)
  if not ok then
    log(cfg, "bitrix24 events: no client for member " .. member_id .. ": " .. tostring(client))
    return nil
  end
  return client
end

local function job(cfg, fn, name, event, member_id, tokens_store, record)
  return function()
    local secrets = {}
    for _, k in ipairs { "application_token", "access_token", "refresh_token" } do
      if type(event.auth[k]) == "string" then secrets[#secrets + 1] = event.auth[k] end
    end
    local client = portal_client(cfg, member_id or "-", tokens_store, record or {})
    local ok, err = xpcall(function() return fn(event, client) end, debug.traceback)
    if client and client ~= cfg.client then pcall(client.close, client) end
    if not ok then
      if client and client._auth then
        for _, s in ipairs(client._auth.secrets or {}) do secrets[#secrets + 1] = s end
      end
      log(cfg, string.format("bitrix24 events: the handler of %s for portal %s (member %s) failed: %s", name,
        tostring(event.auth.domain), tostring(member_id), errors.redact(tostring(err), secrets)))
    end
    return ok
  end
end

--- Checks and parses an event for any HTTP server. Answer `status` at once;
-- when a job is given, run it after the answer has gone: it runs the
-- `cfg.on` function (if any) and logs its errors.
-- @tparam table cfg see `config`
-- @tparam string body the POSTed body
-- @tparam[opt] string content_type
-- @treturn integer status: 200 accepted, 400 malformed, 401 not verified,
-- 413 too large, 500 a store failed
-- @treturn ?function job (on 200)
-- @treturn ?string why (otherwise)
-- @raise on a bad config or a body that is not a string
function M.receive(cfg, body, content_type)
  local ok, bad = check_cfg(cfg)
  if not ok then errors.raise(2, bad) end
  if type(body) ~= "string" then
    errors.raise(2, fail("events.receive: body must be a string, got %s", type(body)))
  end
  local event, why = parse.parse(body, content_type, cfg.limits)
  if not event then return (why:find("larger than", 1, true) and 413 or 400), nil, why end
  local auth = event.auth
  if type(auth) ~= "table" then return 401, nil, "no auth in the event" end
  local name = event.event
  if name == nil and cfg.install and auth.access_token then
    name = "ONAPPINSTALL"   -- the install callback of an API-only app: auth[...] fields only
  end
  if type(name) ~= "string" or name == "" then return 400, nil, "no event name" end
  name = name:upper()
  event.event = name
  local fn
  for k, f in pairs(cfg.on or {}) do
    if k:upper() == name then fn = f end   -- "OnCrmLeadUpdate" is ONCRMLEADUPDATE too
  end

  if cfg.webhook_token then
    if not M.same_token(cfg.webhook_token, auth.application_token) then
      return 401, nil, "the application_token is not the webhook's"
    end
    return 200, fn and job(cfg, fn, name, event, auth.member_id)
  end

  local member_id = auth.member_id
  if not valid_member(member_id) then return 401, nil, "no valid member_id" end
  local tokens_store, app_store, serr = stores(cfg, member_id)
  if not tokens_store then
    log(cfg, "bitrix24 events: " .. serr)
    return 500, nil, "no store"
  end
  local record, lerr = load(app_store)
  if lerr then
    log(cfg, "bitrix24 events: the store of member " .. member_id .. " cannot be read: " .. lerr)
    return 500, nil, "the store cannot be read"
  end
  if record and not record.application_token then record = nil end   -- emptied by ONAPPUNINSTALL

  if name == "ONAPPINSTALL" then
    local status, iwhy = install(cfg, auth, tokens_store, app_store, record)
    if status ~= 200 then
      if status == 500 then log(cfg, "bitrix24 events: " .. iwhy) end
      return status, nil, iwhy
    end
    record = load(app_store)
  elseif not record then
    return 401, nil, "unknown portal"
  elseif not M.same_token(record.application_token, auth.application_token) then
    return 401, nil, "wrong or missing application_token"
  elseif name == "ONAPPUNINSTALL" then
    -- API access is already revoked (FACTS §12.6): nothing left to keep.
    local ok, err = stored.save_to(app_store, {})
    if ok then ok, err = stored.save_to(tokens_store, {}) end
    if not ok then
      log(cfg, "bitrix24 events: ONAPPUNINSTALL: the store failed: " .. tostring(err))
      return 500, nil, "the store failed"
    end
    tokens_store = nil
  end
  return 200, fn and job(cfg, fn, name, event, member_id, tokens_store, record)
end

-- What handle() answers to every event it cannot verify (the reason is
-- logged, not sent).
M.UNAUTHORIZED = "the event is not verified"

local function read_file(path, max)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read(max + 1)
  f:close()
  return s or ""
end

--- The nginx content handler (`content_by_lua*`): reads the raw body (so no
-- `get_post_args` limit applies), answers at once (405 to anything but
-- POST), closes the answer with `ngx.eof()`, then runs the `cfg.on`
-- function in the same request, where cosockets (the client's calls) work.
-- @tparam table cfg see `config`
-- @raise on a bad config
function M.handle(cfg)
  local ok, bad = check_cfg(cfg)
  if not ok then errors.raise(2, bad) end
  local ngx = ngx
  local function answer(status, text)
    ngx.status = status
    ngx.header["Content-Type"] = "text/plain"
    ngx.header["Content-Length"] = text and #text + 1 or 0
    if text then ngx.say(text) end
    ngx.eof()
  end
  if ngx.req.get_method() ~= "POST" then return answer(405, "events are POSTed") end
  local max = (cfg.limits and cfg.limits.max_size) or parse.DEFAULTS.max_size
  local length = tonumber(ngx.var.http_content_length)
  if length and length > max then return answer(413, "the body is too large") end
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if not body then
    -- Larger than client_body_buffer_size: nginx spooled it to a file.
    local file = ngx.req.get_body_file()
    body = file and read_file(file, max) or ""
  end
  local status, run, why = M.receive(cfg, body, ngx.var.content_type)
  if status ~= 200 then
    ngx.log(ngx.WARN, "bitrix24 events: rejected (", status, "): ", why)
    -- One text for every 401: telling "unknown portal" from "wrong token"
    -- would tell anyone which member_ids are installed here.
    return answer(status, status == 401 and M.UNAUTHORIZED or why)
  end
  answer(200)
  if run then run() end
end

--- Consumes the portal's offline event queue, at least once: fetches
-- batches with `event.offline.get` (`clear=0`), keeps their `process_id` in
-- `opts.store` before handling any, clears the records handled and marks
-- the others with `event.offline.error`.
-- @tparam Client client an OAuth client of the portal
-- @tparam table opts `store` and `handler` (`function(ev)` returning true
-- when handled), and optionally `limit`, `filter`, `max_batches`,
-- `on_error`, `auth_connector`
-- @treturn integer handled
-- @treturn integer failed
-- @return[2] nil
-- @treturn[2] Error
-- @raise on bad opts, or a client that is not an OAuth one
function M.consume_offline(client, opts)
  local offline = require "bitrix24.events.offline"
  local ok, why = offline.check(client, opts)
  if not ok then errors.raise(2, why) end
  return offline.consume(client, opts)
end

return M
