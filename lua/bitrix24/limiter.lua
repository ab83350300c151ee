-- Pacing and retries, so a bulk job never meets QUERY_LIMIT_EXCEEDED and
-- never repeats a write by accident (FACTS §5).
--
-- The portal counts requests in a leaky bucket per portal and source IP:
-- each request adds 1, the level drains by `rate` per second, and a
-- request that would lift it over `burst` gets 503. The client keeps the
-- same bucket and waits before it would overflow. The bucket's state lives
-- in a budget store: in this process by default, or in a file shared by
-- every process on the machine (they share the portal's budget too).
--
-- Each method also has an operating-time budget (seconds of server time in
-- the last 10 minutes); the answers' time.operating and
-- time.operating_reset_at tell how much is used and when the oldest minute
-- expires. Bitrix24 sends no Retry-After header.

local core = require "bitrix24.core"
local cjson = require "cjson"
local errors = require "bitrix24.errors"
local shared_dict = require "bitrix24.shared_dict"

local json = cjson.new()

local M = {}

M.PLANS = {
  standard = { rate = 2, burst = 50 },
  enterprise = { rate = 5, burst = 250 },
}

-- Seconds of server time per method per 10 minutes: the docs' example
-- (the cloud's value is configurable, self-hosted defaults to 420).
M.OPERATING_LIMIT = 480

---------------------------------------------------------------- budget stores

-- update(key, fn): runs fn(state) -> new_state, result with the state of
-- one portal's bucket, atomically for every user of the store; returns
-- result, or nil, err when the store failed.

local memory = {}

function M.memory_budget()
  return {
    update = function(_, key, fn)
      local state, result = fn(memory[key] or {})
      memory[key] = state
      return result
    end,
  }
end

--- A budget in a file, shared by the processes of one machine: every
--- update reads and writes it under an exclusive lock.
function M.file_budget(path)
  if type(path) ~= "string" or path == "" then
    errors.raise(1, "file_budget: path must be a non-empty string")
  end
  return {
    path = path,
    update = function(_, key, fn)
      local lock, err = core.lock(path .. ".lock", 60)
      if not lock then return nil, err end
      local all
      local f = io.open(path, "rb")
      if f then
        all = core.json_decode(f:read("*a"))
        f:close()
      end
      if type(all) ~= "table" then all = {} end
      local state, result = fn(type(all[key]) == "table" and all[key] or {})
      all[key] = state
      local ok, werr = core.write_file(path, json.encode(all))
      lock:unlock()
      if not ok then return nil, werr end
      return result
    end,
  }
end

--- A budget in an nginx lua_shared_dict, shared by every worker (each
--- worker is its own process; an in-memory budget would let N workers
--- spend N times the portal's budget). dict: ngx.shared.NAME or NAME.
--- fn does not yield, so the lock is held for microseconds.
local LOCK_TTL = 1        -- seconds before a lock left by a dead worker expires
local LOCK_WAIT = 5       -- seconds to wait for the lock before giving up
local LOCK_POLL = 0.001   -- seconds between tries (ngx.sleep's resolution)

function M.shared_dict_budget(dict)
  dict = shared_dict.resolve(dict, "shared_dict_budget", 1)
  return {
    dict = dict,
    update = function(_, key, fn)
      local state_key = "bitrix24:budget:" .. key
      local unlock, lerr = shared_dict.lock(dict, "bitrix24:lock:" .. key, LOCK_TTL, LOCK_WAIT, LOCK_POLL)
      if not unlock then return nil, lerr end
      local raw = dict:get(state_key)
      local state = type(raw) == "string" and core.json_decode(raw)
      local ok, new_state, result = pcall(fn, type(state) == "table" and state or {})
      local saved, err = true, nil
      if ok then saved, err = dict:set(state_key, json.encode(new_state)) end
      unlock()
      if not ok then error(new_state, 0) end
      if not saved then return nil, "shared dict: " .. tostring(err) end
      return result
    end,
  }
end

-- Inside nginx with `lua_shared_dict bitrix24 ...;` every worker shares
-- the bucket by default; elsewhere it lives in this process.
local function default_budget()
  local ngx = rawget(_G, "ngx")
  local dict = type(ngx) == "table" and type(ngx.shared) == "table" and ngx.shared.bitrix24
  if dict then return M.shared_dict_budget(dict) end
  return M.memory_budget()
end

---------------------------------------------------------------- the limiter

local Limiter = {}
Limiter.__index = Limiter

-- opts: rate, burst, plan, budget, max_wait, tries, deadline,
-- retry_writes, operating_limit. env: { now = fn, sleep = fn }.
function M.new(key, opts, env)
  local plan = M.PLANS[opts.plan or "standard"]
  local rate, burst = opts.rate or plan.rate, opts.burst or plan.burst
  return setmetatable({
    key = key, rate = rate, burst = burst, enabled = opts.rate_limit ~= false,
    budget = opts.budget or default_budget(),
    max_wait = opts.max_wait or 600, deadline = opts.deadline or 900,
    tries = opts.tries or 5, retry_writes = opts.retry_writes or false,
    operating_limit = opts.operating_limit or M.OPERATING_LIMIT,
    now = env.now, sleep = env.sleep, operating = {},
  }, Limiter)
end

-- Reserves one request in the bucket and returns how long to wait before
-- sending it. The reservation is made at once, so processes sharing the
-- budget queue up instead of all waking at the same moment. One unit of
-- the ceiling is kept spare: the portal's clock sees our requests a little
-- later than we send them.
function Limiter:reserve(now)
  local rate, cap = self.rate, math.max(1, self.burst - 1)
  return self.budget:update(self.key, function(state)
    local level, last = tonumber(state.level) or 0, tonumber(state.last) or now
    if now > last then level = math.max(0, level - (now - last) * rate) end
    level = level + 1
    return { level = level, last = math.max(now, last) }, math.max(0, (level - cap) / rate)
  end)
end

-- Waits until the bucket and the method's operating time allow one more
-- request. Returns true, or nil, code, description when it would have to
-- wait past max_wait or the deadline.
function Limiter:acquire(method, deadline)
  local now = self.now()
  local op = self.operating[method]
  if op and op.used >= self.operating_limit * 0.9 and op.reset_at and op.reset_at + 1 > now then
    -- Close to the method's time budget: let the oldest minute expire
    -- first (operating_reset_at is in whole seconds, hence the 1).
    local wait = op.reset_at + 1 - now
    if wait > self.max_wait or now + wait > deadline then
      return nil, "OPERATION_TIME_LIMIT", string.format(
        "%s has used %.0f s of its %d s operating time; it unblocks at %s (in %.0f s), past max_wait",
        method, op.used, self.operating_limit, os.date("!%Y-%m-%d %H:%M:%S UTC", math.floor(op.reset_at)), wait)
    end
    self.sleep(wait)
    op.used = 0
    now = self.now()
  end
  if not self.enabled then return true end
  local wait, err = self:reserve(now)
  if not wait then return nil, "BUDGET_ERROR", "the shared budget failed: " .. tostring(err) end
  if now + wait > deadline then
    return nil, "QUERY_LIMIT_EXCEEDED", string.format("the rate limit would delay the call past its deadline (%.1f s)", wait)
  end
  if wait > 0 then self.sleep(wait) end
  return true
end

-- Learns the method's operating time from a successful answer.
function Limiter:observe(method, env)
  local t = type(env) == "table" and env.time
  if type(t) ~= "table" or type(t.operating) ~= "number" then return end
  local op = self.operating[method]
  if not op then
    op = {}
    self.operating[method] = op
  end
  op.used, op.reset_at = t.operating, tonumber(t.operating_reset_at)
end

-- Reads never change the portal, so a read whose answer was lost can be
-- sent again; anything else might have been done already.
function M.is_read(method)
  local m = method:lower()
  return (m:match("%.get$") or m:match("%.list$") or m:match("%.fields$") or m:match("%.getlist$")) ~= nil
end

local NETWORK = { NETWORK_ERROR = true, TIMEOUT = true, BAD_RESPONSE = true }

-- What to do after a failed try: "retry" (with a delay) or nil.
-- safe: the call changes nothing (a read) or the caller allows repeats.
function Limiter:should_retry(code, status, safe)
  if code == "QUERY_LIMIT_EXCEEDED" then return true end   -- the portal did not run it
  if code == "OPERATION_TIME_LIMIT" then return "operating" end
  if not safe and not self.retry_writes then return false end
  return NETWORK[code] or code == "INTERNAL_SERVER_ERROR" or code == "ERROR_UNEXPECTED_ANSWER"
    or (status ~= nil and status >= 500) or false
end

-- Exponential backoff with full jitter: 0.5 s, 1 s, 2 s ... capped at 30 s.
function Limiter:backoff(try)
  local cap = math.min(30, 0.5 * 2 ^ (try - 1))
  return cap / 2 + math.random() * cap / 2
end

-- How long until a method blocked by OPERATION_TIME_LIMIT runs again:
-- until the reset time the last answer gave, or, when that has passed or
-- no answer gave one, the next backoff step.
function Limiter:blocked_for(method, now, try)
  local op = self.operating[method]
  if op and op.reset_at and op.reset_at + 1 > now then return op.reset_at + 1 - now end
  return self:backoff(try)
end

return M
