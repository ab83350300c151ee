-- Limits of the fake portal (FACTS §5): the leaky bucket every REST request
-- passes, and operating time, the seconds each method used in the last ten
-- buckets (one minute each in Bitrix24), with the `time` block that reports it.

local json = require "bitrix24.fake.json"
local answers = require "bitrix24.fake.answers"

local obj, float, iso_date, set = answers.obj, answers.float, answers.iso_date, json.set

local OP_WINDOW = 10      -- operating time: 10 buckets (FACTS §5)
local DEFAULT_COST = 0.01 -- simulated seconds of execution per call

local Limits = {}
Limits.__index = Limits

-- `cfg` is the portal's live configuration (rate, burst, op_cost, op_bucket),
-- read at every call so /_fake/config takes effect at once.
function Limits.new(cfg)
  return setmetatable({ cfg = cfg, bucket = { level = 0, last = nil }, op_buckets = {} }, Limits)
end

-- Leaky bucket: drains `rate` per second; a request that would push the level
-- over `burst` is refused and not counted.
function Limits:admit(now)
  local rate, burst = self.cfg.rate, self.cfg.burst
  if not rate or rate == 0 then return true end
  local b = self.bucket
  if b.last then b.level = math.max(0, b.level - (now - b.last) * rate) end
  b.last = now
  if b.level + 1 > burst then return false end
  b.level = b.level + 1
  return true
end

-- Seconds this method used in the last 10 buckets.
function Limits:operating(method, now)
  local buckets = self.op_buckets[method]
  if not buckets then return 0 end
  local current, sum = math.floor(now / self.cfg.op_bucket), 0
  for minute, used in pairs(buckets) do
    if minute > current - OP_WINDOW then
      sum = sum + used
    else
      buckets[minute] = nil
    end
  end
  return sum
end

function Limits:charge(method, now, seconds)
  local buckets = self.op_buckets[method] or {}
  self.op_buckets[method] = buckets
  local minute = math.floor(now / self.cfg.op_bucket)
  buckets[minute] = (buckets[minute] or 0) + seconds
end

-- Simulated seconds one call of `method` takes: op_cost as a number, or a
-- map of method -> seconds, or the default.
function Limits:cost(method)
  local c = self.cfg.op_cost
  if type(c) == "number" then return c end
  if type(c) == "table" and type(c[method]) == "number" then return c[method] end
  return DEFAULT_COST
end

-- Seconds until operating time is forgotten: the whole window.
function Limits:window()
  return OP_WINDOW * self.cfg.op_bucket
end

-- When a call that started at `start` and took `seconds` of processing ends:
-- not before `now`, and never so early that duration (finish - start) comes
-- out below processing, which start + seconds can do by a rounding hair (in
-- every recorded real time block processing <= duration).
function Limits.finish_time(start, seconds, now)
  local finish = math.max(now, start + seconds)
  while finish - start < seconds do finish = finish + 1e-6 end
  return finish
end

-- The `time` block (FACTS §3). operating_reset_at = floor(start) + 600 (the
-- window: 10 buckets of 60 s), as in every real response that has it; it is
-- given only when the method has a bucket.
function Limits.time_block(start, finish, processing, operating, window)
  local t = obj(
    "start", float(start),
    "finish", float(finish),
    "duration", float(finish - start),
    "processing", float(processing),
    "date_start", iso_date(start),
    "date_finish", iso_date(finish))
  if operating then
    set(t, "operating_reset_at", json.integral(math.floor(start + window)))
    set(t, "operating", float(operating))
  else
    set(t, "operating", 0)
  end
  return t
end

return Limits
