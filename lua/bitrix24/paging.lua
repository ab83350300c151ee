-- Paging through list methods, one page in memory at a time.
--
-- Normal mode follows the server's offsets: start = 0, then start = next
-- while the answer has one. Fast mode (FACTS §10) skips the COUNT the
-- server runs for every page: it sorts by ID, asks for ID > the last one
-- seen with start = -1, and stops at a page shorter than 50 rows.

local errors = require "bitrix24.errors"
local fail = errors.message
local fanout = require "bitrix24.fanout"

local M = {}

local PAGE = 50

local Pager = {}
Pager.__index = Pager

local function copy(t)
  local c = {}
  for k, v in pairs(t or {}) do c[k] = v end
  return c
end

-- Returns the pager, or nil and why (bad opts, or params fast mode cannot keep).
function M.new(method, params, opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then return nil, fail("each: opts must be a table, got %s", type(opts)) end
  if opts.progress ~= nil and type(opts.progress) ~= "function" then
    return nil, fail("each: opts.progress must be a function")
  end
  -- (accepted and kept for exports that send pages in parallel)
  local bad = fanout.check(opts.parallel, "each: ")
  if bad then return nil, bad end
  local id_key = opts.id_key or "ID"
  if opts.fast then
    local order = params.order
    if order ~= nil and (type(order) ~= "table" or next(order) ~= nil and
        (next(order, next(order)) ~= nil or (order[id_key] or ""):upper() ~= "ASC")) then
      return nil, fail("each: opts.fast sorts by %s ascending; params.order cannot ask for another order", id_key)
    end
    if params.filter ~= nil and type(params.filter) ~= "table" then
      return nil, fail("each: params.filter must be a table")
    end
  end
  return setmetatable({
    method = method, params = params, fast = opts.fast and true or false,
    id_key = id_key, progress = opts.progress, count = 0, parallel = opts.parallel,
  }, Pager)
end

-- The rows of a page: list methods answer with an array, a few (tasks,
-- for one) with a map holding one array.
local function rows_of(result)
  if type(result) ~= "table" then return {} end
  if result[1] ~= nil or next(result) == nil then return result end
  local key, value = next(result)
  if next(result, key) == nil and type(value) == "table" then return value end
  return {}
end

-- The params of the next page, or nil when there is none.
function Pager:next_params(env, rows)
  if self.fast then
    if env and #rows < PAGE then return nil end
    local p = copy(self.params)
    local order = {}
    order[self.id_key] = "ASC"
    p.order = order
    p.filter = copy(self.params.filter)
    if self.last_id then
      local given = tonumber(p.filter[">" .. self.id_key])
      if not given or given < self.last_id then p.filter[">" .. self.id_key] = self.last_id end
    end
    if type(p.select) == "table" then
      local has = false
      for _, f in ipairs(p.select) do has = has or f == self.id_key or f == "*" end
      if not has then
        p.select = copy(p.select)
        p.select[#p.select + 1] = self.id_key
      end
    end
    p.start = -1
    return p
  end
  if not env then
    return self.params
  end
  if env.next == nil or #rows == 0 then return nil end
  local p = copy(self.params)
  p.start = env.next
  return p
end

-- Why a page in normal mode cannot be trusted, or nil. A server whose
-- next does not move past the page it answered (or that sends more rows
-- than its own total) would keep the loop going forever.
function Pager:distrust(page_params, env, rows)
  if self.fast then return nil end
  local total = tonumber(env.total)
  if total and self.count + #rows > total then
    return string.format("the server sent %d rows but its total is %d", self.count + #rows, total)
  end
  if env.next ~= nil then
    local start, next_ = tonumber(page_params.start) or 0, tonumber(env.next)
    if not next_ or next_ <= start then
      return string.format("next = %s does not advance past start = %s", tostring(env.next), tostring(start))
    end
  end
  return nil
end

-- fetch(params) -> envelope | nil, err. The iterator returns each row;
-- on a failure it returns false, err once, then ends.
function Pager:iterator(fetch)
  local rows, i, env, finished = {}, 0, nil, false
  return function()
    if finished then return nil end
    i = i + 1
    while rows[i] == nil do
      local p = self:next_params(env, rows)
      if not p then
        finished = true
        return nil
      end
      local err
      env, err = fetch(p)
      if not env then
        finished = true
        return false, err
      end
      rows, i = rows_of(env.result), 1
      local why = self:distrust(p, env, rows)
      if why then
        finished = true
        return false, errors.new { code = "BAD_RESPONSE", method = self.method, description = why }
      end
      if self.fast and rows[#rows] ~= nil then
        local last = tonumber(rows[#rows][self.id_key])
        if not last or (self.last_id and last <= self.last_id) then
          finished = true
          return false, errors.new { code = "BAD_RESPONSE", method = self.method,
            description = "fast paging needs rows with increasing " .. self.id_key }
        end
        self.last_id = last
      end
      self.count = self.count + #rows
      if self.progress then self.progress(self.count, not self.fast and env.total or nil) end
    end
    return rows[i]
  end
end

return M
