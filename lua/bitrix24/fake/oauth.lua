-- OAuth 2.0 of the fake portal (FACTS §8): access and refresh tokens, the
-- check of a token on a REST call, and the grants of the token endpoint
-- (oauth.bitrix.info/oauth/token/).

local json = require "bitrix24.fake.json"
local answers = require "bitrix24.fake.answers"

local set = json.set
local obj, json_response, error_body, ERR = answers.obj, answers.json_response, answers.error_body, answers.ERR

local oauth = {}

-- A new access/refresh pair; the previous refresh token stops working
-- (rotation, FACTS §8). Old access tokens live on until they expire.
function oauth.issue_tokens(portal)
  if portal.refresh_token then portal.refresh_tokens[portal.refresh_token] = nil end
  portal.access_token = portal.random_string(32)
  portal.refresh_token = portal.random_string(32)
  portal.access_tokens[portal.access_token] = { issued = portal.clock() }
  portal.refresh_tokens[portal.refresh_token] = true
end

-- Forget every token and issue a fresh pair.
function oauth.reset_tokens(portal)
  portal.access_tokens, portal.refresh_tokens, portal.refresh_token = {}, {}, nil
  oauth.issue_tokens(portal)
end

function oauth.expire_tokens(portal)
  for _, tok in pairs(portal.access_tokens) do tok.expired = true end
end

local function request_token(params, headers)
  for _, name in ipairs({ "auth", "access_token" }) do
    local v = params[name]
    if type(v) == "string" and v ~= "" then return v end
  end
  local h = (headers or {})["authorization"]
  return h and h:match("^[Bb]earer%s+(%S+)")
end

-- The token of a REST call: nil when it is good, else the failure.
function oauth.check(portal, params, req, entry)
  local token = request_token(params, req.headers)
  if not token then
    set(entry, "auth", "none")
    return ERR.no_auth()
  end
  local t = portal.access_tokens[token]
  if not t then return ERR.invalid_token() end
  if t.expired or portal.clock() - t.issued > portal.cfg.token_ttl then return ERR.expired_token() end
end

local function token_body(portal, base_url, now)
  local ttl = portal.cfg.token_ttl
  local rest = (base_url or "http://127.0.0.1") .. "/rest/"
  return obj(
    "access_token", portal.access_token,
    "client_endpoint", rest,
    "domain", "oauth.bitrix.info",
    "expires", json.integral(math.floor(now) + ttl),
    "expires_in", ttl,
    "member_id", portal.member_id,
    "refresh_token", portal.refresh_token,
    "scope", "crm",
    "server_endpoint", rest,
    "status", "L",
    "user_id", portal.user_id)
end

local function token_error(status, code, text)
  return json_response(status, error_body(code, text))
end

-- The token endpoint's answer to the parsed request `p`: only the
-- refresh_token grant can succeed (no authorization codes are ever issued).
function oauth.grant(portal, p, base_url, now)
  local function given(k) return type(p[k]) == "string" and p[k] ~= "" end
  if not (given("grant_type") and given("client_id") and given("client_secret")) then
    return token_error(400, "invalid_request", "Missing grant_type, client_id or client_secret")
  elseif p.client_id ~= portal.client_id or p.client_secret ~= portal.client_secret then
    return token_error(401, "invalid_client", "Invalid client credentials")
  elseif p.grant_type == "authorization_code" then
    return token_error(400, "invalid_grant", "Invalid authorization code")
  elseif p.grant_type ~= "refresh_token" then
    return token_error(400, "invalid_request", "Unsupported grant_type")
  elseif not given("refresh_token") then
    return token_error(400, "invalid_request", "Missing refresh_token")
  elseif not portal.refresh_tokens[p.refresh_token] then
    return token_error(400, "invalid_grant", "Invalid refresh token")
  end
  oauth.issue_tokens(portal)
  return json_response(200, token_body(portal, base_url, now))
end

return oauth
