-- The one path every request takes.
--
-- A request is a small state: method, url, body, whether it is safe to
-- repeat, its tries and its deadline. It goes: wait for the budget ->
-- send -> classify the answer -> decide (done, refresh the token, follow
-- a same-origin redirect, wait and repeat, or fail). decide() is the only
-- place that chooses what happens after a failure; the limiter only paces.
--
-- run() does not know how the request is sent or how it waits: io.send
-- and io.sleep are given by the caller, so the same code runs one
-- blocking call, a coroutine of the plain-Lua scheduler (send and sleep
-- yield to it), or an nginx thread (cosockets and ngx.sleep).

local core = require "bitrix24.core"
local errors = require "bitrix24.errors"
local limiter = require "bitrix24.limiter"

local M = {}

local MAX_REDIRECTS = 3

-- Methods named like reads that change the portal, so they are never
-- sent twice, not even with retry_writes: event.offline.get reserves the
-- events it returns under a new process_id (clear=0) or deletes them
-- (clear=1, its default), so a repeat after a lost answer strands or loses
-- the first answer's events (FACTS §12.4).
M.NEVER_REPEAT = { ["event.offline.get"] = true }

-- Reads never change the portal, so a read whose answer was lost can be
-- sent again; anything else might have been done already.
function M.is_read(method)
  local m = method:lower()
  if M.NEVER_REPEAT[m] then return false end
  return (m:match("%.get$") or m:match("%.list$") or m:match("%.fields$") or m:match("%.getlist$")) ~= nil
end

-- Whether a request may be sent twice: the one place that decides it. A
-- request carrying only reads may; any other only when the client's
-- opts.retry_writes allows it, and never one of NEVER_REPEAT. subcalls: a
-- batch's keys -> methods (the batch is what its commands are); a batch
-- without them is not known to be reads.
local function safe(c, method, subcalls)
  local carried = subcalls or { method }
  local reads, never = true, false
  for _, m in pairs(carried) do
    reads = reads and M.is_read(m)
    never = never or M.NEVER_REPEAT[m:lower()] ~= nil
  end
  return reads or (c._policy.retry_writes and not never)
end

-- Where a redirect may be followed: the same scheme, host and port. A
-- portal that moved to another host must not receive our secrets from a
-- redirect; the caller updates the URL instead.
local function same_origin(a, location)
  if type(location) ~= "string" then return false end
  local origin = location:match("^(https?://[^/?#]+)")
  return origin ~= nil and origin:lower() == a.origin:lower()
end

local NETWORK = { NETWORK_ERROR = true, TIMEOUT = true, BAD_RESPONSE = true }

-- Whether a failure may be repeated: "operating" (after the method's
-- operating time frees up), true (after a backoff), or false.
local function repeatable(code, status, safe)
  if code == "QUERY_LIMIT_EXCEEDED" then return true end   -- the portal did not run it
  if code == "OPERATION_TIME_LIMIT" then return "operating" end
  if not safe then return false end
  return NETWORK[code] or code == "INTERNAL_SERVER_ERROR" or code == "ERROR_UNEXPECTED_ANSWER"
    or (status ~= nil and status >= 500) or false
end

-- Exponential backoff with full jitter: 0.5 s, 1 s, 2 s ... capped at 30 s.
function M.backoff(try)
  local cap = math.min(30, 0.5 * 2 ^ (try - 1))
  return cap / 2 + math.random() * cap / 2
end

--- What to do after a failed try, from the failure, the request's state
--- (its try count, redirects, refresh, deadline) and the time now:
---   "refresh"            refresh the OAuth token and send again
---   "redirect", url      send the same POST to url
---   "wait", seconds      sleep, then send again
---   "fail", description  give up with this description
--- c: the client (auth, limiter, policy).
function M.decide(c, req, failure, now)
  local code, a, lim = failure.code, c._auth, c._limiter
  if code == "expired_token" and a.kind == "oauth" and not req.refreshed then return "refresh" end
  if code == "PORTAL_MOVED" and same_origin(a, failure.location) and req.redirects < MAX_REDIRECTS then
    return "redirect", failure.location
  end
  local again = req.tries < c._policy.tries and repeatable(code, failure.status, req.safe)
  if not again then return "fail", failure.description end
  local wait
  if again == "operating" then
    -- Until the reset time the last answer gave; when that has passed, or
    -- no answer gave one, the next backoff step.
    local reset_at = lim:operating_reset(req.key, now)
    wait = reset_at and reset_at - now or M.backoff(req.tries)
    if wait > lim.max_wait or now + wait > req.deadline then
      return "fail", string.format("%s; %s unblocks at %s (in %.0f s)", failure.description, req.method,
        limiter.utc(now + wait), wait)
    end
  else
    wait = M.backoff(req.tries)
  end
  -- (a try needs MIN_TRY of the deadline, see limiter.acquire)
  if now + wait + limiter.MIN_TRY > req.deadline then return "fail", failure.description end
  return "wait", wait
end

local TLS_HINT = "; if the portal's certificate comes from its own CA, pass opts.ca_file"
  .. " (or opts.ca_path) with that CA"

-- The error a request ends with. f: code, description, status, envelope,
-- location.
function M.error(c, method, f, tries)
  local a, description = c._auth, f.description or ""
  if f.code == "PORTAL_MOVED" and type(f.location) ~= "string" then
    description = description .. " with no Location header: the portal does not say where it went"
  elseif f.code == "PORTAL_MOVED" then
    description = description .. " to " .. f.location .. "; update the client's URL"
  elseif f.code == "TLS_ERROR" and not description:find("lua_ssl_trusted_certificate", 1, true) then
    -- (the nginx transport names its own remedy: opts.ca_file has no effect there)
    description = description .. TLS_HINT
  end
  if tries > 1 then description = description .. " (after " .. tries .. " tries)" end
  local err = errors.new {
    code = f.code, description = errors.redact(description, a.secrets), status = f.status, method = method,
  }
  err.tries = tries
  -- The raw envelope may echo what was sent (a token, the webhook code).
  if type(f.envelope) == "table" then err.response = errors.redact_all(f.envelope, a.secrets) end
  return err
end

-- The error of a request the client was closed under (client:close()
-- from a callback during a fan-out).
function M.cancelled(c, req)
  return M.error(c, req.method, { code = "CANCELLED",
    description = "the client was closed before the call finished" }, math.max(req.tries, 1))
end

-- The JSON body with OAuth's token, added at send time (after a refresh
-- it changes), as the last key, so it wins over a stray "auth".
local function with_auth(body, token)
  if not token then return body end
  local auth = '"auth":' .. core.json_encode(token)
  if body == "{}" then return "{" .. auth .. "}" end
  return body:sub(1, -2) .. "," .. auth .. "}"
end

--- A new request: method (as given), body (JSON) and, for a batch,
--- subcalls (its keys -> their methods), whose operating time it spends
--- and which say whether it may be repeated. A request not safe to repeat
--- is marked a write, so the transport never sends it twice on its own.
function M.request(c, method, body, subcalls)
  local ok = safe(c, method, subcalls)
  return {
    method = method, key = method:lower(), body = body, subcalls = subcalls, write = not ok, safe = ok,
    url = c._auth.base .. method, tries = 0, redirects = 0, refreshed = false,
  }
end

--- Runs one request to its end: the envelope, or nil and an error.
--- io: send(url, body, seconds, write) -> envelope, status | nil, failure;
--- sleep(seconds); now().
function M.run(c, req, io)
  local a, opts, lim = c._auth, c._opts, c._limiter
  req.deadline = req.deadline or io.now() + lim.deadline
  while true do
    if not rawget(c, "_http") then return nil, M.cancelled(c, req) end
    local ok, code, description = lim:acquire(req.key, req.deadline, io.sleep, req.subcalls)
    if not ok then
      return nil, M.error(c, req.method, { code = code, description = description }, math.max(req.tries, 1))
    end
    req.tries = req.tries + 1
    local token = a.access_token
    if opts.on_request then
      -- The URL really requested (after a redirect, where it went), shown
      -- without its secret.
      local url = req.url
      local shown = url:sub(1, #a.base) == a.base and a.shown .. url:sub(#a.base + 1) or url
      opts.on_request { method = req.method, url = errors.redact(shown, a.secrets) }
      -- The hook may close the client: then there is nothing to send with.
      if not rawget(c, "_http") then return nil, M.cancelled(c, req) end
    end
    local started = opts.on_response and core.monotonic()
    -- The try ends by the deadline too: the transport takes the smaller of
    -- its own timeout and what is left (at least a moment, so it can say
    -- TIMEOUT). A request not safe to repeat is marked a write, so the
    -- transport never sends it twice on its own.
    local left = math.max(req.deadline - io.now(), 0.001)
    local env, status = io.send(req.url, with_auth(req.body, token), left, req.write)
    local failure = not env and status or nil
    if opts.on_response then
      opts.on_response {
        method = req.method, duration = core.monotonic() - started,
        status = env and status or failure.status, code = failure and failure.code,
        operating = env and type(env.time) == "table" and env.time.operating or nil,
      }
    end
    if env then
      lim:observe(req.key, env, req.subcalls)
      return env
    end
    -- (closed by on_response: no refresh, no next try)
    if not rawget(c, "_http") then return nil, M.error(c, req.method, failure, req.tries) end
    local now = io.now()
    local action, arg = M.decide(c, req, failure, now)
    if action == "refresh" then
      req.refreshed = true
      local done, rc, rd, rs = a:refresh(c._http, token, opts.allow_http, io.sleep)
      if not done then
        return nil, M.error(c, req.method, { code = rc, description = rd, status = rs }, req.tries)
      end
      req.url = a.base .. req.method
    elseif action == "redirect" then
      req.redirects = req.redirects + 1
      req.url = arg
    elseif action == "wait" then
      if failure.code == "QUERY_LIMIT_EXCEEDED" then
        -- The portal's bucket is full: every request of this client waits,
        -- not only this one.
        lim:pause(now + arg)
      end
      io.sleep(arg)
    else
      failure.description = arg
      return nil, M.error(c, req.method, failure, req.tries)
    end
  end
end

return M
