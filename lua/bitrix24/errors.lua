--- Error objects and secret redaction.
--
-- Failures of the network or the portal are returned as `nil, err`, where
-- err is one of these objects; programmer errors are raised (see raise).
-- @module bitrix24.errors

--- An error object: what a call returns as its second value when the network
-- or the portal failed. `tostring(err)` is one line without secrets, as
-- `bitrix24 crm.lead.contact.add: (no code): Not found. (HTTP 400)`.
-- @table Error
-- @field code Bitrix24's code, unchanged (it can be `""`), or one of `CLIENT_CODES`
-- @field description Bitrix24's `error_description`, or the client's explanation
-- @field status the HTTP status, or nil when no answer came
-- @field method the REST method called
-- @field kind `"client"` for a code of `CLIENT_CODES`, else `"portal"`
-- @field response the decoded answer when there was one, each secret replaced by three asterisks
-- @field tries how many times the request was tried
local Error = {}
Error.__index = Error

--- Every code the client itself produces, with what it means (code ->
-- text): their kind is "client". Any other code came from the portal (or its
-- token endpoint), unchanged (it can be the empty string): kind "portal".
-- The limiter's own give-ups have their own codes, so a call the client
-- never sent cannot be mistaken for the portal's 503 or 429.
-- @table CLIENT_CODES
-- @field NETWORK_ERROR no connection, or it closed before the whole answer came
-- @field TIMEOUT `timeout`, `connect_timeout` or `deadline` ran out during a try
-- @field TLS_ERROR the TLS handshake or the certificate check failed
-- @field BAD_RESPONSE not a Bitrix24 JSON envelope (an HTML page, malformed JSON, ...)
-- @field PORTAL_MOVED a redirect to another host (not followed; the description names it)
-- @field RESPONSE_TOO_LARGE the answer is larger than `max_response`
-- @field REFRESH_FAILED the OAuth token expired and could not be refreshed
-- @field STORE_ERROR the token store could not be locked, read or written
-- @field BUDGET_ERROR the rate-limit budget could not be read or written
-- @field RATE_LIMIT_WAIT the client's bucket would delay the call past its deadline; not sent
-- @field OPERATING_TIME_WAIT the method's operating time unblocks too late; not sent
-- @field NO_CONFIG `from_env` found no credentials
-- @field CANCELLED the client was closed while the call waited or was in flight
local CLIENT_CODES = {
  NETWORK_ERROR = "the request or the answer was lost on the network",
  TIMEOUT = "the call took longer than the timeout",
  TLS_ERROR = "the TLS handshake or certificate check failed",
  BAD_RESPONSE = "the answer is not a Bitrix24 JSON envelope",
  PORTAL_MOVED = "the portal answered with a redirect",
  RESPONSE_TOO_LARGE = "the answer is larger than max_response",
  REFRESH_FAILED = "the OAuth token could not be refreshed",
  STORE_ERROR = "the token store could not be locked, read or written",
  BUDGET_ERROR = "the rate-limit budget could not be read or written",
  RATE_LIMIT_WAIT = "the client's rate-limit bucket would delay the call past its deadline; not sent",
  OPERATING_TIME_WAIT = "the method's operating time unblocks after max_wait or the deadline; not sent",
  NO_CONFIG = "no credentials in the environment",
  CANCELLED = "the client was closed while the call waited or was in flight",
}

function Error:__tostring()
  local s = "bitrix24"
  if self.method then s = s .. " " .. self.method end
  local code = self.code ~= "" and self.code or "(no code)"
  s = s .. ": " .. code
  if self.description and self.description ~= "" then
    s = s .. ": " .. self.description
  end
  if self.status then s = s .. " (HTTP " .. self.status .. ")" end
  return (s:gsub("[\r\n]+", " "))
end

local M = { CLIENT_CODES = CLIENT_CODES }

--- Makes an error object of `fields` (code, description, status, method and
-- anything extra), setting `kind` from the code.
-- @tparam table fields the fields, taken over (not copied)
-- @treturn Error the same table
function M.new(fields)
  fields.kind = CLIENT_CODES[fields.code] and "client" or "portal"
  return setmetatable(fields, Error)
end

--- Whether v is an error object made by `new`.
-- @param v any value
-- @treturn boolean
function M.is_error(v)
  return getmetatable(v) == Error
end

--- Replaces every occurrence of each secret in s (plain text, not a
-- pattern) with three asterisks. Secrets shorter than 4 characters are ignored: they
-- would mangle ordinary words and cannot be real credentials.
-- @param s a string (anything else is returned as it is)
-- @tparam {string,...} secrets
-- @return s without the secrets
function M.redact(s, secrets)
  if type(s) ~= "string" then return s end
  for i = 1, #secrets do
    local secret = secrets[i]
    if type(secret) == "string" and #secret >= 4 then
      local from = 1
      while true do
        local a, b = s:find(secret, from, true)
        if not a then break end
        s = s:sub(1, a - 1) .. "***" .. s:sub(b + 1)
        from = a + 3
      end
    end
  end
  return s
end

--- A copy of a decoded answer with every secret replaced, in keys and
-- values alike (decoded JSON has no cycles).
-- @param v a decoded answer
-- @tparam {string,...} secrets
-- @return the copy
function M.redact_all(v, secrets)
  if type(v) == "string" then return M.redact(v, secrets) end
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[M.redact_all(k, secrets)] = M.redact_all(x, secrets) end
  return setmetatable(out, getmetatable(v))
end

-- Programmer errors. The checks return nil and a message made by
-- message(); each public function raises it once with raise(2, why), so
-- the error points at the caller's line, not at ours.
local unpack = table.unpack or unpack -- 5.1 and LuaJIT: the global

--- The message of a programmer error: fmt formatted with any values
-- (on Lua 5.1 too, where `%s` takes only strings and numbers).
-- @local
function M.message(fmt, ...)
  -- "%s" takes any value on 5.2+ and LuaJIT, but only strings and numbers
  -- on 5.1, where a boolean or nil would turn the message into format's own
  -- "bad argument" error.
  local args = { n = select("#", ...), ... }
  for i = 1, args.n do
    local t = type(args[i])
    if t ~= "string" and t ~= "number" then args[i] = tostring(args[i]) end
  end
  return fmt:format(unpack(args, 1, args.n))
end

--- Raises a programmer error, `"bitrix24: " .. why`. level as error's: 2
-- blames the caller of the function calling raise.
-- @local
function M.raise(level, why)
  error("bitrix24: " .. why, level + 1)
end

return M
