-- How the fake portal answers: outcomes of a method (ok/fail, not yet
-- encoded), the standard Bitrix24 errors (FACTS §4) and JSON responses
-- { status, headers, body } for the host.

local json = require "bitrix24.fake.json"

local omap, set = json.omap, json.set

local answers = {}

answers.JSON_TYPE = "application/json; charset=utf-8"

-- An ordered map from alternating key/value arguments, for bodies whose key
-- order should match the real server's.
function answers.obj(...)
  local t, n = omap(), select("#", ...)
  for i = 1, n, 2 do
    local k, v = select(i, ...)
    set(t, k, v)
  end
  return t
end
local obj = answers.obj

function answers.float(x)
  return x * 1.0 -- float subtype on 5.3+, so PHP-like "1.0" output; no-op before
end

function answers.iso_date(t)
  return os.date("!%Y-%m-%dT%H:%M:%S+00:00", math.floor(t))
end

function answers.error_body(code, text)
  return obj("error", code, "error_description", text)
end

-- `error_code` is for the request log; the pipeline removes it before the
-- response leaves.
function answers.json_response(status, body)
  return {
    status = status,
    headers = { ["Content-Type"] = answers.JSON_TYPE },
    body = json.encode(body),
    error_code = type(body) == "table" and type(body.error) == "string" and body.error or nil,
  }
end

-- Outcome of a method handler: success or failure.
function answers.ok(result, total, nxt)
  return { result = result, total = total, next = nxt }
end

function answers.fail(status, code, text)
  return { failed = true, status = status, error = code, error_description = text }
end
local fail = answers.fail

function answers.error_response(f)
  return answers.json_response(f.status, answers.error_body(f.error, f.error_description))
end

function answers.success_body(out)
  return obj("result", out.result, "next", out.next, "total", out.total, "time", out.time)
end

answers.ERR = {
  no_auth = function() return fail(401, "NO_AUTH_FOUND", "Wrong authorization data") end,
  invalid_token = function() return fail(401, "invalid_token", "The access token provided is invalid.") end,
  expired_token = function() return fail(401, "expired_token", "The access token provided has expired.") end,
  not_found_method = function() return fail(404, "ERROR_METHOD_NOT_FOUND", "Method not found!") end,
  query_limit = function() return fail(503, "QUERY_LIMIT_EXCEEDED", "Too many requests") end,
  op_limit = function()
    return fail(429, "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit.")
  end,
  access_denied = function() return fail(403, "ACCESS_DENIED", "Access denied!") end,
  owner_invalid = function() return fail(400, "", "The parameter ownerEntityID is invalid or not defined.") end,
  not_found = function() return fail(400, "", "Not found.") end,
}

return answers
