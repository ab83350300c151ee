-- Leads deleted and added while a client exports them, so specs and
-- benchmarks can check that an export delivers every lead exactly once.
-- Two ways in (bitrix24.fake.control): /_fake/leads changes the leads at
-- once; /_fake/churn sets a rule applied after every `every`-th successful
-- crm.lead.list call (top-level or inside a batch, where it lands between
-- two sub-calls). Every change is recorded, so a spec can tell which ids
-- went away and which came.

local php = require "bitrix24.fake.php"
local records = require "bitrix24.fake.records"

local intval = php.intval

local SEED = 4242 -- picks of delete_count: the same every run

local Churn = {}
Churn.__index = Churn

function Churn.new()
  return setmetatable({ rule = nil, list_calls = 0, deleted = {}, appended = {} }, Churn)
end

-- A count option: nil stays nil, otherwise a whole number >= `min`.
local function count(spec, key, min)
  local v = spec[key]
  if v == nil then return nil end
  if type(v) ~= "number" or v ~= math.floor(v) or v < min then
    error(key .. " must be a whole number >= " .. min, 0)
  end
  return intval(v)
end

local function id_list(spec)
  local ids = {}
  if spec.delete == nil then return ids end
  if type(spec.delete) ~= "table" then error("delete must be an array of lead ids", 0) end
  for i, v in ipairs(spec.delete) do
    if type(v) ~= "number" then error("delete must be an array of lead ids", 0) end
    ids[i] = intval(v)
  end
  return ids
end

-- Delete the leads `ids` that exist and append `n` new ones; recorded.
function Churn:change(store, ids, n)
  local deleted = {}
  for _, id in ipairs(ids) do
    if records.delete(store, id) then deleted[#deleted + 1] = id end
  end
  local appended = records.append(store, n or 0)
  for _, id in ipairs(deleted) do self.deleted[#self.deleted + 1] = id end
  for _, id in ipairs(appended) do self.appended[#self.appended + 1] = id end
  return deleted, appended
end

-- Check a change given to /_fake/leads: { delete = [ids], append = n }.
function Churn.read_change(spec)
  return id_list(spec), count(spec, "append", 0) or 0
end

-- Set the rule (replacing any): { every = K, delete = [ids], delete_count
-- = d, append = m, times = t }. Raises a message on a bad rule.
function Churn:set(spec)
  self.rule = {
    every = count(spec, "every", 1) or error("every must be a whole number >= 1", 0),
    delete = id_list(spec),
    delete_count = count(spec, "delete_count", 0) or 0,
    append = count(spec, "append", 0) or 0,
    times = count(spec, "times", 1),
    state = SEED,
  }
  self.list_calls = 0
end

function Churn:clear()
  self.rule = nil
end

-- After a successful crm.lead.list call.
function Churn:after_list_call(store)
  local r = self.rule
  if not r then return end
  self.list_calls = self.list_calls + 1
  if self.list_calls % r.every ~= 0 then return end
  local ids, picked = {}, {}
  for i, id in ipairs(r.delete) do ids[i] = id end
  -- delete_count distinct leads spread over the whole table: behind an
  -- export and ahead of it.
  local want = math.min(r.delete_count, #store.ids)
  while want > 0 do
    r.state = (r.state * 16807) % 2147483647
    local id = store.ids[r.state % #store.ids + 1]
    if not picked[id] then
      picked[id] = true
      ids[#ids + 1] = id
      want = want - 1
    end
  end
  self:change(store, ids, r.append)
  if r.times then
    r.times = r.times - 1
    if r.times == 0 then self.rule = nil end
  end
end

return Churn
