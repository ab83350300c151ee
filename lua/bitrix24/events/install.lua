-- Verifying ONAPPINSTALL from a portal we do not know yet (no stored
-- application_token to compare with). Every field of the event is the
-- sender's word. An access token that works at the claimed domain proves
-- nothing about `member_id`: an admin of one listed portal could install
-- under another portal's member_id, and then send events in its name. The
-- one party that can vouch for member_id is the token endpoint: refreshing
-- the install's refresh_token there (FACTS §8) answers with the member_id
-- and client_endpoint that token belongs to. (Its `domain` is
-- "oauth.bitrix.info", not the portal: client_endpoint names the portal.)
--
-- The refresh rotates the install's tokens: from then on the answer's pair
-- is the only live one, so it goes to cfg.on_refresh at once and is what
-- the caller stores. If the answer is lost on the way (rotated, but never
-- seen here), the install fails and cannot be retried with the same
-- tokens: the portal's admin has to reinstall the app.

local errors = require "bitrix24.errors"

local M = {}

local function is_loopback(host)
  return host == "localhost" or host:match("^127%.%d+%.%d+%.%d+$") ~= nil
end

-- The client_endpoint a domain listed in cfg.install.domains must have,
-- or nil, why.
local function listed_endpoint(cfg, auth)
  local domain = type(auth.domain) == "string" and auth.domain:lower() or nil
  local listed = false
  for _, d in ipairs(cfg.install.domains) do
    if domain and d:lower() == domain then listed = true end
  end
  if not listed then return nil, "ONAPPINSTALL from a domain not in cfg.install.domains" end
  local host = domain:match("^[^:]+")
  return (is_loopback(host) and "http://" or "https://") .. domain .. "/rest/"
end

-- One refresh of the install's tokens at cfg.token_url, through the same
-- code as every refresh of the library (its checks of the answer, its
-- redaction). Returns the answer's token set, or nil, code, why.
-- Every token set the endpoint hands out goes to on_new first.
local function refresh(cfg, auth, endpoint, on_new)
  local bitrix24 = require "bitrix24"
  local got
  local ok, client = pcall(bitrix24.oauth, {
    endpoint = endpoint, access_token = auth.access_token, refresh_token = auth.refresh_token,
    client_id = cfg.client_id, client_secret = cfg.client_secret, token_url = cfg.token_url,
    on_refresh = function(tokens) got = tokens; on_new(tokens) end,
  }, cfg.client_opts)
  if not ok then return nil, "CONFIG", tostring(client) end
  local a = client._auth
  local secrets = { auth.access_token, auth.refresh_token, cfg.client_secret }
  local called, done, code, description = pcall(a.refresh, a, client._http, a.access_token,
    client._opts.allow_http, client._io.sleep)
  for _, s in ipairs(a.secrets) do secrets[#secrets + 1] = s end
  client:close()
  if got then return got end
  if not called then return nil, "ERROR", errors.redact(tostring(done), secrets) end
  return nil, tostring(code), errors.redact(tostring(description), secrets)
end

--- verify(cfg, auth, log) -> tokens | nil, status, why.
--- tokens: the rotated set the token endpoint answered for this install,
--- to be stored in place of the event's (whose refresh token is dead now).
--- log(msg) gets what a person must see: a config that cannot verify, a
--- token endpoint that did not answer, an install under a foreign member_id.
function M.verify(cfg, auth, log)
  local want, why = listed_endpoint(cfg, auth)
  if not want then return nil, 401, why end
  if auth.client_endpoint ~= want then return nil, 401, "ONAPPINSTALL whose client_endpoint is not " .. want end
  if not (cfg.client_id and cfg.client_secret) then
    why = "ONAPPINSTALL refused: a new install is verified at the token endpoint, "
      .. "which needs cfg.client_id and cfg.client_secret"
    log("bitrix24 events: " .. why)
    return nil, 401, why
  end
  for _, k in ipairs { "access_token", "refresh_token" } do
    if type(auth[k]) ~= "string" or auth[k] == "" then return nil, 401, "ONAPPINSTALL without a " .. k end
  end
  local tokens, code, description = refresh(cfg, auth, want, function(t)
    if not cfg.on_refresh then return end
    local ok, err = pcall(cfg.on_refresh, t)
    if not ok then log("bitrix24 events: cfg.on_refresh failed: " .. errors.redact(tostring(err),
      { t.access_token, t.refresh_token, cfg.client_secret })) end
  end)
  if not tokens then
    why = "ONAPPINSTALL: the token endpoint did not renew its tokens (" .. code .. ": " .. description .. ")"
    -- invalid_grant: a token that is not (or no longer) valid, the sender's
    -- problem. Anything else (no answer, our credentials refused) is ours.
    if code == "invalid_grant" then return nil, 401, why end
    log("bitrix24 events: " .. why .. "; if the tokens were renewed anyway, the portal must reinstall the app")
    return nil, 500, why
  end
  local endpoint = type(tokens.client_endpoint) == "string" and tokens.client_endpoint:lower() or nil
  if tokens.member_id ~= auth.member_id or endpoint ~= want then
    why = "ONAPPINSTALL for member " .. tostring(auth.member_id) .. " at " .. want
      .. " whose tokens belong to member " .. tostring(tokens.member_id) .. " at " .. tostring(endpoint)
      .. " (per the token endpoint)"
    log("bitrix24 events: refused " .. why)
    return nil, 401, why
  end
  return tokens
end

return M
