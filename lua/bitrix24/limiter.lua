-- Pacing, so a bulk job never meets QUERY_LIMIT_EXCEEDED (FACTS §5). What
-- happens after a failure is decided in pipeline.lua.
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
local store = require "bitrix24.store"
local runtime = require "bitrix24.runtime"

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
-- result, or nil, err when the store failed. It never raises and always
-- gives its lock back: a corrupt file or a raising fn must not stall every
-- other process for the lock's timeout.

local memory = {}

function M.memory_budget()
  return {
    update = function(_, key, fn)
      local ok, state, result = pcall(fn, memory[key] or {})
      if not ok then return nil, tostring(state) end
      memory[key] = state
      return result
    end,
  }
end

-- The states of a budget file or dict entry, checked: a table of tables
-- that JSON can hold again (a level of 1e999 decodes to inf, which the
-- encoder refuses). Returns the usable part and what was wrong, if anything.
local function clean_states(all)
  if type(all) ~= "table" then return {}, "it is not a JSON object" end
  local bad
  for k, v in pairs(all) do
    if type(k) ~= "string" or type(v) ~= "table" or not pcall(json.encode, v) then
      all[k] = nil
      bad = bad or ("its entry " .. string.format("%q", tostring(k)) .. " is not a budget state")
    end
  end
  return all, bad
end

-- Runs fn on the state under key of the decoded budget `all`; returns the
-- new whole budget's JSON text and fn's result. Raises on a failing fn or
-- encoder (the caller catches it).
local function apply(all, key, fn)
  local state, result = fn(all[key] or {})
  all[key] = state
  return json.encode(all), result
end

--- A budget in a file, shared by the processes of one machine: every
--- update reads and writes it under an exclusive lock. A file that holds
--- something else (corrupt, hostile) is repaired: the bad part is dropped
--- and the call that met it gets BUDGET_ERROR.
function M.file_budget(path)
  if type(path) ~= "string" or path == "" then
    errors.raise(2, "file_budget: path must be a non-empty string")
  end
  local file = store.file(path)
  local function locked(key, fn)
    local there, decoded = file:read()
    if there == nil then return nil, decoded end
    local all, bad = {}, nil
    if there then all, bad = clean_states(decoded) end
    if bad then
      local ok, err = file:write(json.encode(all))
      return nil, "the budget file " .. path .. " was corrupt (" .. bad .. ")"
        .. (ok and "; it has been repaired" or "; repairing it failed: " .. tostring(err))
    end
    local text, result = apply(all, key, fn)
    local ok, err = file:write(text)
    if not ok then return nil, err end
    return result
  end
  return {
    path = path,
    update = function(_, key, fn)
      local ok, result, err = store.locked(file, locked, key, fn)
      if ok == nil then return nil, result end
      if not ok then return nil, "the budget file " .. path .. ": " .. tostring(result) end
      return result, err
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
  local why
  dict, why = store.resolve(dict, "shared_dict_budget")
  if not dict then errors.raise(2, why) end
  local function locked(entry, fn)
    local there, state = entry:read()
    if not there then
      state = {}
    elseif type(state) ~= "table" or not pcall(json.encode, state) then
      entry:delete()
      return nil, "the shared dict's " .. entry.key .. " held no budget state; it has been reset"
    end
    local new_state, result = fn(state)
    local saved, err = entry:write(json.encode(new_state))
    if not saved then return nil, "shared dict: " .. tostring(err) end
    return result
  end
  return {
    dict = dict,
    update = function(_, key, fn)
      local entry = store.dict(dict, "bitrix24:budget:" .. key, "bitrix24:lock:" .. key, LOCK_TTL, LOCK_WAIT,
        LOCK_POLL)
      local ok, result, err = store.locked(entry, locked, entry, fn)
      if ok == nil then return nil, result end
      if not ok then return nil, "shared dict " .. entry.key .. ": " .. tostring(result) end
      return result, err
    end,
  }
end

-- Inside nginx with `lua_shared_dict bitrix24 ...;` every worker shares
-- the bucket by default; elsewhere it lives in this process.
local function default_budget()
  local dict = runtime.shared_dict("bitrix24")
  if dict then return M.shared_dict_budget(dict) end
  return M.memory_budget()
end

---------------------------------------------------------------- the limiter

-- Seconds of the deadline a try needs at the least (see acquire).
M.MIN_TRY = 0.25

local Limiter = {}
Limiter.__index = Limiter

-- opts: rate, burst, plan, budget, max_wait, deadline, operating_limit.
-- env: { now = fn }.
function M.new(key, opts, env)
  local plan = M.PLANS[opts.plan or "standard"]
  local rate, burst = opts.rate or plan.rate, opts.burst or plan.burst
  return setmetatable({
    key = key, rate = rate, burst = burst, enabled = opts.rate_limit ~= false,
    budget = opts.budget or default_budget(),
    max_wait = opts.max_wait or 600, deadline = opts.deadline or 900,
    operating_limit = opts.operating_limit or M.OPERATING_LIMIT,
    now = env.now, operating = {}, paused_until = 0,
  }, Limiter)
end

-- A finite number, or nil.
local function finite(v)
  return type(v) == "number" and v == v and v > -math.huge and v < math.huge and v or nil
end

-- Reserves one request in the bucket and returns { wait = seconds before
-- sending it, taken = true }. The reservation is made at once, so
-- processes sharing the budget queue up instead of all waking at the same
-- moment. One unit of the ceiling is kept spare: the portal's clock sees
-- our requests a little later than we send them.
-- When the wait would pass `deadline` nothing is reserved ({ taken =
-- false }): a reservation never used would stay in the bucket, and every
-- process sharing it would wait for requests that never come.
-- So a level is never above burst + rate * opts.deadline (the longest wait
-- this client reserves); one read above it (left by an older version, or
-- written by hand) is clamped to it, one that is not a number counts as a
-- full bucket, and a `last` in the future as now.
function Limiter:reserve(deadline, method)
  local rate, cap = self.rate, math.max(1, self.burst - 1)
  local ceiling = cap + rate * self.deadline
  if self.budget.reserve then return self:reserve_declared(rate, cap, ceiling, deadline, method) end
  local ok, r, err = pcall(self.budget.update, self.budget, self.key, function(state)
    -- The time is read under the budget's lock: processes sharing it then
    -- see `last` only grow, and no stretch of draining is counted twice.
    return M.step(state, self.now(), rate, cap, ceiling, deadline)
  end)
  -- A budget of the caller's own may raise: its failure is returned like
  -- any other.
  if not ok then return nil, tostring(r) end
  if type(r) ~= "table" then return nil, tostring(err) end
  return r
end

-- One reservation in the bucket `state` at time `now` (see reserve):
-- returns the new state and { wait, taken }.
function M.step(state, now, rate, cap, ceiling, deadline)
  local level, last = finite(state.level), finite(state.last)
  if state.level == nil then level = 0 elseif not level or level < 0 then level = cap end
  if not last or last > now then last = now end
  level = math.max(0, math.min(level, ceiling) - (now - last) * rate)
  local wait = math.max(0, (level + 1 - cap) / rate)
  if now + wait > deadline then return { level = level, last = now }, { wait = wait, taken = false } end
  return { level = math.min(level + 1, ceiling), last = now }, { wait = wait, taken = true }
end

-- A budget that keeps the bucket where a Lua function cannot run (Redis)
-- offers budget:reserve(key, p) instead of update: the same step done by
-- the store itself, with the deadline as seconds from now (the store's
-- clock may differ from ours). It also hands back what the store knows of
-- the method's operating time (r.operating = { used, reset_at }).
function Limiter:reserve_declared(rate, cap, ceiling, deadline, method)
  local p = { rate = rate, cap = cap, ceiling = ceiling, deadline_in = deadline - self.now(), method = method }
  local ok, r, err = pcall(self.budget.reserve, self.budget, self.key, p)
  if not ok then return nil, tostring(r) end
  if type(r) ~= "table" then return nil, tostring(err) end
  local shared, op = r.operating, method and self.operating[method]
  if shared and method and (not op or (shared.reset_at or 0) > (op.reset_at or 0)) then
    self.operating[method] = { used = shared.used, reset_at = shared.reset_at }
  end
  return r
end

-- A time as the "unblocks at" texts show it.
function M.utc(t)
  return os.date("!%Y-%m-%d %H:%M:%S UTC", math.floor(t))
end
local utc = M.utc

-- Waits (with sleep) until the method's operating time allows one more
-- request: when the time it has used plus what its last request added
-- would come close to the limit, until the oldest minute expires. Returns
-- true, or nil, code, description when that is past max_wait or the deadline.
function Limiter:operating_wait(method, deadline, sleep)
  local now = self.now()
  local op = self.operating[method]
  if op and op.used + op.step >= self.operating_limit * 0.9 and op.reset_at and op.reset_at + 1 > now then
    -- (operating_reset_at is in whole seconds, hence the 1)
    local wait = op.reset_at + 1 - now
    if wait > self.max_wait or now + wait > deadline then
      return nil, "OPERATING_TIME_WAIT", string.format(
        "%s has used %.0f s of its %g s operating time; it unblocks at %s (in %.0f s), past max_wait or "
        .. "the deadline; not sent", method, op.used, self.operating_limit, utc(op.reset_at), wait)
    end
    sleep(wait)
    -- What is left is unknown until the next answer says; that answer's
    -- total is no step.
    op.used, op.waited = 0, true
  end
  return true
end

-- Waits (with sleep(seconds), the caller's) until the bucket and the
-- operating time of the method (and of the methods a batch runs: subcalls
-- maps its keys to them, each charged to its own budget) allow one more
-- request. Returns true, or nil, code, description when it would have to
-- wait past max_wait or the deadline (the client's own codes: the request
-- was not sent) or the budget failed.
function Limiter:acquire(method, deadline, sleep, subcalls)
  -- A try started with almost nothing left of the deadline would only
  -- time out (and a write might run on the portal unseen): a wait is
  -- worth taking only while it leaves MIN_TRY for the try itself.
  deadline = deadline - M.MIN_TRY
  local now = self.now()
  if self.paused_until > now then
    -- The portal answered QUERY_LIMIT_EXCEEDED to one of our requests:
    -- the others hold back too.
    sleep(self.paused_until - now)
  end
  local ok, code, description = self:operating_wait(method, deadline, sleep)
  if not ok then return nil, code, description end
  for _, m in pairs(subcalls or {}) do
    ok, code, description = self:operating_wait(m:lower(), deadline, sleep)
    if not ok then return nil, code, description end
  end
  if not self.enabled then return true end
  local r, err = self:reserve(deadline, method)
  if not r then return nil, "BUDGET_ERROR", "the rate-limit budget failed: " .. tostring(err) end
  if not r.taken then
    return nil, "RATE_LIMIT_WAIT", string.format(
      "the client's rate limit would delay the call %.1f s, past its deadline; not sent", r.wait)
  end
  if r.wait > 0 then sleep(r.wait) end
  return true
end

-- Records a method's operating time from one time block. `step` is what
-- the method's last request added (a batch of 50 list calls adds 50
-- calls' worth), so pacing can stop before the next request would pass
-- the limit rather than after.
local function learn(self, method, t)
  if type(t) ~= "table" or type(t.operating) ~= "number" then return end
  local op = self.operating[method]
  if not op then
    op = { used = t.operating, step = 0 }
    self.operating[method] = op
  elseif not op.waited then
    local step = t.operating - op.used
    if step > 0 then op.step = step end
  end
  op.waited = nil
  op.used, op.reset_at = t.operating, tonumber(t.operating_reset_at)
  -- A shared budget passes it on to the other machines (with its next
  -- reservation: no round trip of its own).
  if self.budget.observe then pcall(self.budget.observe, self.budget, self.key, method, op.used, op.reset_at) end
end

-- Learns the operating time from a successful answer: the method's own,
-- or for a batch (subcalls: key -> method) each sub-call's from
-- result_time, where the last of a method's sub-calls holds its total.
-- The batch itself is not charged (FACTS §5): its outer time block only
-- repeats a sub-call's.
function Limiter:observe(method, env, subcalls)
  if not subcalls then return learn(self, method, type(env) == "table" and env.time) end
  local result = type(env) == "table" and type(env.result) == "table" and env.result
  local times = result and type(result.result_time) == "table" and result.result_time or {}
  if times[1] ~= nil then -- keys 0..n-1 arrive as an array (batch.lua's as_map)
    local m = {}
    for i, v in ipairs(times) do m[tostring(i - 1)] = v end
    times = m
  end
  local last = {}
  for key, m in pairs(subcalls) do
    local t = times[key]
    m = m:lower()
    if type(t) == "table" and type(t.operating) == "number" and (not last[m] or t.operating > last[m].operating) then
      last[m] = t
    end
  end
  for m, t in pairs(last) do learn(self, m, t) end
end

-- When a method blocked by OPERATION_TIME_LIMIT runs again, as the last
-- answer said (operating_reset_at is in whole seconds, hence the 1); nil
-- when no answer said or that time has passed.
function Limiter:operating_reset(method, now)
  local op = self.operating[method]
  if op and op.reset_at and op.reset_at + 1 > now then return op.reset_at + 1 end
  return nil
end

-- Holds every request of this client back until `t`.
function Limiter:pause(t)
  if t > self.paused_until then self.paused_until = t end
end

return M
