-- The portal's rate budget in Redis, shared by every machine that talks to
-- the portal (see docs/many-machines.md).
--
-- The bucket is the limiter's (limiter.step), computed by a Redis script,
-- so the read-modify-write is atomic on the server and its clock (TIME) is
-- the only one that counts: machines whose clocks disagree still drain the
-- same bucket at the same pace. One EVALSHA per request, which also
-- carries the operating times this process has learned since its last
-- reservation and brings back the method's operating time as the other
-- machines last saw it.
--
-- Keys, per portal: PREFIX.."budget:"..portal (the bucket, a hash) and
-- PREFIX.."operating:"..portal (method -> "used reset_at"). Both expire
-- once nothing more can be learned from them: the bucket when it would have
-- drained (plus a minute), the operating times after the portal's 10
-- minutes.
--
-- When Redis cannot be used the reservation is made in a local budget
-- (this process's memory; in nginx the `bitrix24` shared dict when there is
-- one), reported once per outage; Redis is tried again every `retry_after`
-- seconds, and sharing resumes. budget_fallback = false makes the call fail
-- with BUDGET_ERROR instead.

local limiter = require "bitrix24.limiter"
local redis = require "bitrix24.redis"
local runtime = require "bitrix24.runtime"

local M = {}

-- ARGV: rate, cap, ceiling, deadline_in, method, then triples method,
-- used, reset_at. The rules are limiter.step's; numbers go back as strings
-- (Redis would cut a Lua number to an integer).
local SCRIPT = { source = [[
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rate, cap, ceiling, deadline_in = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function finite(v)
  if v and v == v and v > -math.huge and v < math.huge then return v end
end
local s = redis.call('HMGET', KEYS[1], 'level', 'last')
local level, last = finite(tonumber(s[1])), finite(tonumber(s[2]))
if not s[1] then level = 0 elseif not level or level < 0 then level = cap end
if not last or last > now then last = now end
level = math.max(0, math.min(level, ceiling) - (now - last) * rate)
local wait = math.max(0, (level + 1 - cap) / rate)
local taken = wait <= deadline_in
if taken then level = math.min(level + 1, ceiling) end
redis.call('HSET', KEYS[1], 'level', string.format('%.17g', level), 'last', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((ceiling / rate + 60) * 1000))
local i = 6
while ARGV[i + 2] do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1] .. ' ' .. ARGV[i + 2])
  i = i + 3
end
if i > 6 then redis.call('PEXPIRE', KEYS[2], 660000) end
local op = ARGV[5] ~= '' and redis.call('HGET', KEYS[2], ARGV[5]) or ''
return { string.format('%.17g', wait), taken and '1' or '0', op or '' }
]] }

local Budget = {}
Budget.__index = Budget

-- The addresses whose loss has been reported, per process or nginx worker
-- (so a budget made per request reports an outage once too).
local lost = {}

-- Without Redis: nginx's shared dict if configured, else this process.
local function local_budget()
  local dict = runtime.shared_dict("bitrix24")
  if dict then return limiter.shared_dict_budget(dict) end
  return limiter.memory_budget()
end

local function default_report(text)
  if runtime.nginx then
    runtime.ngx.log(runtime.ngx.WARN, text)
  else
    io.stderr:write(text, "\n")
  end
end

--- config: a redis:// URL or a table (see redis.config), plus
--- budget_fallback (default true) and report(text), which gets one line
--- when Redis is lost and one when sharing resumes (default: stderr, or
--- nginx's error log).
function M.new(config)
  local cfg = redis.config(config, "redis_budget")
  return setmetatable({
    cfg = cfg, conn = redis.new(cfg), fallback = cfg.budget_fallback ~= false,
    report = cfg.report or default_report, pending = {}, local_budget = nil,
  }, Budget)
end

-- Remembers a method's operating time; it goes to Redis with the next
-- reservation for this portal.
function Budget:observe(key, method, used, reset_at)
  if type(used) ~= "number" or type(reset_at) ~= "number" then return end
  local p = self.pending[key]
  if not p then
    p = {}
    self.pending[key] = p
  end
  p[method] = { used, reset_at }
end

local function num(v)
  return string.format("%.17g", v)
end

-- The reservation in Redis: { wait, taken, operating } | nil, err.
function Budget:reserve_shared(key, p)
  local args = { num(p.rate), num(p.cap), num(p.ceiling), num(p.deadline_in), p.method or "" }
  local pending = self.pending[key]
  if pending then
    for method, v in pairs(pending) do
      args[#args + 1], args[#args + 2], args[#args + 3] = method, num(v[1]), num(v[2])
    end
  end
  local prefix = self.cfg.prefix
  local r, err = self.conn:with(function(run)
    return redis.eval(run, SCRIPT, { prefix .. "budget:" .. key, prefix .. "operating:" .. key }, args)
  end)
  if type(r) ~= "table" or not tonumber(r[1]) then
    return nil, "Redis budget at " .. self.cfg.host .. ":" .. self.cfg.port .. ": " .. tostring(err or "no answer")
  end
  self.pending[key] = nil
  local out = { wait = tonumber(r[1]), taken = r[2] == "1" }
  local used, reset_at = tostring(r[3] or ""):match("^(%S+) (%S+)$")
  if used then out.operating = { used = tonumber(used), reset_at = tonumber(reset_at) } end
  return out
end

-- The limiter's declared reservation (limiter.reserve_declared).
function Budget:reserve(key, p)
  local r, err = self:reserve_shared(key, p)
  if r then
    if lost[self.cfg.where] then
      lost[self.cfg.where] = nil
      self.report("bitrix24: the Redis budget at " .. self.cfg.where .. " is back; the budget is shared again")
    end
    return r
  end
  if not self.fallback then return nil, err end
  if not lost[self.cfg.where] then
    lost[self.cfg.where] = true
    self.report("bitrix24: " .. err .. "; pacing with this machine's own budget until it is back")
  end
  self.local_budget = self.local_budget or local_budget()
  local now = runtime.now()
  return self.local_budget:update(key, function(state)
    return limiter.step(state, runtime.now(), p.rate, p.cap, p.ceiling, now + p.deadline_in)
  end)
end

return M
