-- Paging through list methods: client:each.
--
-- A list method answers at most 50 rows a call; a batch carries up to 50
-- calls, so one request can bring 2,500 rows (FACTS §11). Pages go out in
-- batches of opts.page_batch list calls (1: one plain call per request).
--
-- Normal mode keeps the caller's order: one counted call says the total,
-- then batches of start = N calls fetch the rest.
--
-- Fast mode sorts by ID and never counts (start = -1): each call asks for
-- ID > the previous call's last row, $result[pK][49][ID] inside a batch.
-- After a page shorter than 50 that reference finds no row 49 and the
-- server puts the whole page there instead, with unspecified results
-- (FACTS §11), so every page is checked here: ids above the previous
-- page's last one, strictly increasing; what a chain returns after a short
-- page, or after a page that fails the check, is dropped, and the next
-- request starts again from the last good id.
--
-- With opts.parallel > 1 the work is cut into units that do not depend on
-- each other (offset ranges; id ranges in fast mode, after a first request
-- for the first and the last page), up to `parallel` of them are asked for
-- at once, and their rows still come out in order: a unit's rows wait
-- until the units before it are done, one batch each.

local core = require "bitrix24.core"
local errors = require "bitrix24.errors"
local batch = require "bitrix24.batch"

local fanout = require "bitrix24.fanout"

local fail = errors.message

local M = {}

local PAGE = 50        -- rows a list call answers
local MAX_BATCH = 50   -- calls a batch may hold (FACTS §6)
-- An id range of a parallel fast export is sized to fill this share of a
-- batch: a range holding more rows than a batch costs one more request.
local FILL = 0.95
-- Rows given out between two turns of the transfers in flight.
local PUMP = 200

local OPTIONS = {
  fast = "boolean", id_key = "string", progress = "function", page_batch = "number", parallel = "number",
}

local Pager = {}
Pager.__index = Pager

local function copy(t)
  local c = {}
  for k, v in pairs(t or {}) do c[k] = v end
  return c
end

local function whole(v, lo, hi)
  return v == math.floor(v) and v >= lo and v <= hi
end

-- Returns the options (a table), or nil and why.
local function check_opts(opts)
  if opts == nil then return {} end
  if type(opts) ~= "table" then return nil, fail("each: opts must be a table, got %s", type(opts)) end
  for k, v in pairs(opts) do
    local want = OPTIONS[k]
    if not want then return nil, fail("each: unknown option opts.%s", tostring(k)) end
    if type(v) ~= want then return nil, fail("each: opts.%s must be a %s, got %s", k, want, type(v)) end
  end
  if opts.page_batch and not whole(opts.page_batch, 1, MAX_BATCH) then
    return nil, fail("each: opts.page_batch must be a whole number from 1 to %d", MAX_BATCH)
  end
  local bad = fanout.check(opts.parallel, "each: ")
  if bad then return nil, bad end
  if opts.id_key and not opts.id_key:match("^[%w_]+$") then
    return nil, fail("each: opts.id_key must be a field name (letters, digits, '_')")
  end
  return opts
end

-- The params every fast-mode call starts from: ID ascending, no count,
-- and the id among the selected fields.
local function fast_base(params, id_key)
  local p = copy(params)
  p.order = { [id_key] = "ASC" }
  p.filter = copy(params.filter)
  p.start = -1
  if type(p.select) == "table" then
    local has = false
    for _, f in ipairs(p.select) do has = has or f == id_key or f == "*" end
    if not has then
      p.select = copy(p.select)
      p.select[#p.select + 1] = id_key
    end
  end
  return p
end

-- A number, or a string of one (as the portal reads it), or nil.
local function numeric(v)
  return (type(v) == "number" or type(v) == "string") and tonumber(v) or nil
end

-- What is wrong with the params the pager itself reads, or nil: the
-- pager computes with them, so a wrong type must be refused here, naming
-- it, not fail deep inside.
local function check_params(params, fast, id_key)
  if not fast then
    local start, n = params.start, numeric(params.start)
    if start ~= nil and not (n and whole(n, -1, math.huge)) then
      return fail("each: params.start must be a whole number, got %s",
        type(start) == "string" and string.format("%q", start) or tostring(start))
    end
    return nil
  end
  local order = params.order
  if order ~= nil and type(order) ~= "table" then
    return fail("each: params.order must be a table, got %s", type(order))
  end
  for k, v in pairs(order or {}) do
    if type(v) ~= "string" then
      return fail('each: params.order.%s must be "ASC" or "DESC", got %s', tostring(k), type(v))
    end
  end
  if order ~= nil and next(order) ~= nil and
      (next(order, next(order)) ~= nil or (order[id_key] or ""):upper() ~= "ASC") then
    return fail("each: opts.fast sorts by %s ascending; params.order cannot ask for another order", id_key)
  end
  local filter = params.filter
  if filter ~= nil and type(filter) ~= "table" then
    return fail("each: params.filter must be a table, got %s", type(filter))
  end
  for _, op in ipairs { ">", "<" } do
    local v = filter and filter[op .. id_key]
    if v ~= nil and not numeric(v) then
      return fail('each: opts.fast: params.filter["%s%s"] must be an id (a number), got %s', op, id_key,
        type(v) == "string" and string.format("%q", v) or type(v))
    end
  end
  return nil
end

-- Returns the pager, or nil and why (bad opts, or params fast mode cannot
-- keep). parallel: the client's, for when opts has none.
function M.new(method, params, opts, parallel)
  local why
  opts, why = check_opts(opts)
  if not opts then return nil, why end
  local id_key = opts.id_key or "ID"
  why = check_params(params, opts.fast, id_key)
  if why then return nil, why end
  local self = setmetatable({
    method = method, params = params, fast = opts.fast or false, id_key = id_key,
    progress = opts.progress, page_batch = opts.page_batch or MAX_BATCH,
    parallel = opts.parallel or parallel or 1,
    count = 0, units = 0, chain_rows = 0, seen_to = -math.huge,
  }, Pager)
  if self.fast then
    self.base = fast_base(params, id_key)
    self.start_id = tonumber(self.base.filter[">" .. id_key])
  end
  -- A parameter the batch's query string cannot carry is refused now,
  -- before anything is sent.
  if self.page_batch > 1 then
    local ok
    ok, why = pcall(core.query, self.fast and self.base or params)
    if not ok then return nil, fail("each: %s: %s", method, (tostring(why):gsub("^.-: ", ""))) end
  end
  return self
end

-- The rows of a page: list methods answer with an array, a few (tasks,
-- for one) with a map holding one array, whose key goes into the chain's
-- references once seen.
function Pager:rows_of(result)
  if type(result) ~= "table" then return {} end
  if result[1] ~= nil then self.wrap = nil end
  if result[1] ~= nil or next(result) == nil then return result end
  local key, value = next(result)
  if next(result, key) == nil and type(value) == "table" then
    self.wrap = key
    return value
  end
  return {}
end

function Pager:bad(why)
  return errors.new { code = "BAD_RESPONSE", method = self.method, description = why }
end

function Pager:page_done(rows, total)
  self.count = self.count + rows
  if self.progress then self.progress(self.count, total) end
end

---------------------------------------------------------------- requests

-- A request for `list`, an array of each call's params: one plain call,
-- or a batch whose calls are keyed p0, p1, ... in order.
function Pager:request(list)
  if #list == 1 then return { method = self.method, params = list[1] } end
  local keys, cmd, methods = {}, {}, {}
  for i, p in ipairs(list) do
    local key = "p" .. (i - 1)
    keys[i], cmd[key], methods[key] = key, self.method .. "?" .. core.query(p), self.method
  end
  return { batch = { keys = keys, cmd = cmd, methods = methods } }
end

-- The pages of an answer in the order asked: { result, total, next } or,
-- at a call that failed, { err } as the last one.
function Pager:pages_of(req, env, make_error)
  if not req.batch then return { { result = env.result, total = tonumber(env.total), next = env.next } } end
  local r = env.result
  if type(r) ~= "table" then return nil, self:bad("the batch answer has no result map") end
  local res, errs = batch.as_map(r.result), batch.as_map(r.result_error)
  local totals, nexts = batch.as_map(r.result_total), batch.as_map(r.result_next)
  local pages = {}
  for i, key in ipairs(req.batch.keys) do
    local e = errs[key]
    if e ~= nil then
      local code = type(e) == "table" and e.error or ""
      local description = type(e) == "table" and e.error_description or ""
      pages[i] = { err = make_error(type(code) == "string" and code or tostring(code),
        type(description) == "string" and description or "", self.method) }
      return pages
    end
    if res[key] == nil then return nil, self:bad("the batch answer has no page " .. key) end
    pages[i] = { result = res[key], total = tonumber(totals[key]), next = nexts[key] }
  end
  return pages
end

---------------------------------------------------------------- fast mode

-- A chain walks the ids in (lo, hi) upwards; hi = nil: no upper end.
local Chain = {}
Chain.__index = Chain

function Pager:chain(lo, hi)
  return setmetatable({ lo = lo, hi = hi, rows = {}, pos = 1 }, Chain)
end

-- One call's params: ids above `after` (a number or a $result reference)
-- and below hi.
function Pager:fast_params(after, hi)
  local p, key = copy(self.base), self.id_key
  p.filter = copy(self.base.filter)
  if after ~= nil then p.filter[">" .. key] = after end
  if hi then
    local given = tonumber(p.filter["<" .. key])
    if not given or given > hi then p.filter["<" .. key] = hi end
  end
  return p
end

-- The id of row 49 of the call under `key`, as the server resolves it.
function Pager:reference(key)
  local wrap = self.wrap and "[" .. self.wrap .. "]" or ""
  return string.format("$result[%s]%s[%d][%s]", key, wrap, PAGE - 1, self.id_key)
end

function Chain:request(pager)
  if self.probe then return pager:probe_request() end
  -- After a short page inside a batch, one plain call looks for rows
  -- added meanwhile instead of a chain that would mostly be dropped.
  local size = self.confirm and 1 or pager.page_batch
  -- The last range's batch ends with the tail: one plain call for ids
  -- above the range, rows added during the export.
  if self.tail then size = size - 1 end
  local list = { pager:fast_params(self.lo, self.hi) }
  for i = 2, size do list[i] = pager:fast_params(pager:reference("p" .. (i - 2)), self.hi) end
  if self.tail then
    list[size + 1], self.tail_at = pager:fast_params(self.hi - 1), size + 1
  end
  return pager:request(list)
end

-- Whether rows are ids in (lo, hi), strictly increasing.
function Pager:ascending(rows, lo, hi)
  local prev = lo
  for _, row in ipairs(rows) do
    local id = type(row) == "table" and tonumber(row[self.id_key])
    if not id or (prev and id <= prev) or (hi and id >= hi) then return false end
    prev = id
  end
  return true
end

-- Takes the pages of one request; returns the good rows and an error.
function Chain:take(pager, pages)
  if self.probe then return self:take_probe(pager, pages) end
  if self.tail then return self:take_tail(pager, pages) end
  return self:take_pages(pager, pages)
end

function Chain:take_pages(pager, pages)
  local out = {}
  self.confirm = false
  for i, page in ipairs(pages) do
    if page.err then return out, page.err end
    local rows = pager:rows_of(page.result)
    if not pager:ascending(rows, self.lo, self.hi) then
      -- The first call was asked with a plain number: a server that breaks
      -- it cannot be trusted. A later one followed a reference that went
      -- astray: drop it and all after it, and start again from self.lo.
      if i == 1 then
        return out, pager:bad("fast paging needs rows with increasing " .. pager.id_key
          .. " above the one asked for")
      end
      return out
    end
    for _, row in ipairs(rows) do out[#out + 1] = row end
    if rows[1] ~= nil then
      self.lo = tonumber(rows[#rows][pager.id_key])
      -- A range whose last id came is done: no call for the empty page.
      if self.hi and self.lo + 1 >= self.hi and self.lo == math.floor(self.lo) then self.done = true end
      -- How densely ids fill the ranges so far sizes the next ones.
      pager.chain_rows, pager.seen_to = pager.chain_rows + #rows, math.max(pager.seen_to, self.lo)
    end
    pager:page_done(#rows)
    if self.done then return out end
    if #rows < PAGE then
      -- The end of the range. Where the range has no end and the short
      -- page came after others of the same batch, one more call looks
      -- again from the last id.
      if i == 1 or self.hi then self.done = true else self.confirm = true end
      return out
    end
  end
  return out
end

-- The last range's pages, then (once the range is done) its tail's: the
-- unit goes on as a chain with no upper end from the range's last id, and
-- the tail page is that chain's first (a full one: more were added).
function Chain:take_tail(pager, pages)
  local n = self.tail_at
  local tail = pages[n]
  pages[n] = nil
  local out, err = self:take_pages(pager, pages)
  if err or not self.done then return out, err end
  self.lo, self.hi, self.tail, self.done = self.hi - 1, nil, false, false
  local more
  more, err = self:take_pages(pager, { tail })
  for _, row in ipairs(more) do out[#out + 1] = row end
  return out, err
end

-- Parallel fast mode's first request is as short as it can be, since
-- nothing else is in flight while it runs: the first page and the last
-- (ids descending). They give the id range and how densely ids fill it;
-- the first page is the export's first rows.
function Pager:probe_request()
  local desc = self:fast_params(self.start_id)
  desc.order = { [self.id_key] = "DESC" }
  return self:request { self:fast_params(self.start_id), desc }
end

-- How many ids the rows span from the first to the last (nil when one of
-- the two is not a number).
local function span(pager, rows)
  local a, b = rows[1] and tonumber(rows[1][pager.id_key]), rows[#rows] and tonumber(rows[#rows][pager.id_key])
  if a and b then return math.abs(b - a) + 1 end
end

function Chain:take_probe(pager, pages)
  self.probe = false
  local last_page = pages[2]
  local out, err = self:take_pages(pager, { pages[1] })
  if last_page and last_page.err then return out, err or last_page.err end
  -- The table ended in the first page (or it failed): no ranges.
  if err or self.done then return out, err end
  self.done = true
  local top = pager:rows_of(last_page.result)
  local last = top[1] and tonumber(top[1][pager.id_key])
  local ids, spread = #out, span(pager, out)
  if #top > 1 and span(pager, top) then ids, spread = ids + #top, spread + span(pager, top) end
  pager.cursor, pager.last_id, pager.probe_density = self.lo, last or self.lo, ids / spread
  pager.first_id, pager.seen_to, pager.chain_rows = self.lo, self.lo, 0
  return out
end

-- How densely ids fill the table (rows per id, at most 1): from the
-- ranges read so far once they hold enough rows, else the probe's guess
-- from its two pages.
function Pager:density()
  local seen = self.seen_to > self.first_id and self.chain_rows > 1000
  local d = seen and self.chain_rows / (self.seen_to - self.first_id) or self.probe_density
  return math.min(math.max(d, 1e-6), 1)
end

-- The next id range: the ids left up to the last one are cut into as few
-- ranges as fill at most FILL of a batch each at the density seen so far,
-- of equal width (no small range at the end). The last range's batch
-- carries the tail (see Chain:take_tail), asked alongside the last ranges
-- rather than after them; with one call a batch the tail is a unit of its
-- own.
function Pager:next_range()
  local lo = self.cursor
  if not lo then return nil end
  local left = self.last_id - lo
  if left <= 0 then
    -- Only the tail is left: one plain call above the last id.
    self.cursor = nil
    local tail = self:chain(lo, nil)
    tail.confirm = true
    return tail
  end
  local most = math.max(PAGE, math.ceil(self.page_batch * PAGE * FILL / self:density()))
  local n = math.ceil(left / most)
  local width = math.ceil(left / n)
  self.cursor = lo + width
  local range = self:chain(lo, lo + width + 1)
  if n == 1 and self.page_batch > 1 then range.tail, self.cursor = true, nil end
  return range
end

---------------------------------------------------------------- normal mode

-- Pages at fixed offsets: the counted first call, or start = N calls.
local Offsets = {}
Offsets.__index = Offsets

function Offsets:request(pager)
  local list = {}
  for i, start in ipairs(self.starts) do
    list[i] = copy(pager.params)
    if start then list[i].start = start end
  end
  return pager:request(list)
end

-- Why a page in normal mode cannot be trusted, or nil. A server whose
-- next does not move past the page it answered (or that sends more rows
-- than its own total) would keep the export going forever.
function Pager:distrust(start, page, rows)
  if page.total and self.count + #rows > page.total then
    return string.format("the server sent %d rows but its total is %d", self.count + #rows, page.total)
  end
  if page.next ~= nil then
    local next_ = tonumber(page.next)
    if not next_ or next_ <= start then
      return string.format("next = %s does not advance past start = %s", tostring(page.next), tostring(start))
    end
  end
end

function Offsets:take(pager, pages)
  local out = {}
  self.done = true
  for i, page in ipairs(pages) do
    if page.err then return out, page.err end
    local rows = pager:rows_of(page.result)
    local start = self.starts[i] or tonumber(pager.params.start) or 0
    local why = pager:distrust(start, page, rows)
    if why then return out, pager:bad(why) end
    for _, row in ipairs(rows) do out[#out + 1] = row end
    pager:page_done(#rows, page.total)
    -- The first call's total and next place the rest. Without a total (no
    -- list method seen does that) the pages follow next one at a time.
    if self.first then pager.total = page.total end
    if self.first or not pager.total then pager.next_start = tonumber(page.next) end
    -- No next: the table ended here (it may have shrunk since the count).
    if page.next == nil or rows[1] == nil then pager.ended = true end
  end
  return out
end

-- The next unit of work, or nil when all have been handed out.
function Pager:next_unit()
  self.units = self.units + 1
  if self.fast then
    if self.parallel == 1 then
      return self.units == 1 and self:chain(self.start_id, nil) or nil
    end
    if self.units == 1 then
      local probe = self:chain(self.start_id, nil)
      probe.probe = true
      return probe
    end
    return self:next_range()
  end
  if self.units == 1 then return setmetatable({ starts = { false }, first = true, rows = {}, pos = 1 }, Offsets) end
  local start = self.next_start
  if self.ended or not start or (self.total and start >= self.total) then return nil end
  if not self.total then
    self.next_start = nil
    return setmetatable({ starts = { start }, rows = {}, pos = 1 }, Offsets)
  end
  local starts = {}
  while #starts < self.page_batch and start < self.total do
    starts[#starts + 1] = start
    start = start + PAGE
  end
  self.next_start = start
  return setmetatable({ starts = starts, rows = {}, pos = 1 }, Offsets)
end

---------------------------------------------------------------- iteration

-- The window: the units from the head on each have a request in flight
-- whenever they have no rows left to give and are not done, `parallel` of
-- them at most; an answer is taken (in the order the requests were
-- added) only when the head unit needs rows. The window reaches one unit
-- past `parallel`, so a slot freed by the head's answer is refilled
-- before its rows are read: at most `parallel` + 1 answers' rows are held.
function Pager:fill(queue, head, win, sent)
  for k = head, head + self.parallel do
    if sent.last - sent.first + 1 >= self.parallel then break end
    local unit = queue[k]
    if not unit then
      unit = self:next_unit()
      if not unit then break end
      queue[k] = unit
    end
    if unit.err then break end
    if not unit.done and not unit.asked and unit.pos > #unit.rows then
      local req = unit:request(self)
      win.add(req)
      sent.last = sent.last + 1
      unit.asked, sent[sent.last] = true, { unit, req }
    end
  end
end

-- Takes the oldest answer and gives its rows (or its error) to its unit.
function Pager:receive(win, sent, make_error)
  local unit, req = sent[sent.first][1], sent[sent.first][2]
  sent[sent.first], sent.first = nil, sent.first + 1
  local env, err = win.take()
  local pages, rows
  if env then pages, err = self:pages_of(req, env, make_error) end
  if pages then rows, err = unit:take(self, pages) end
  unit.rows, unit.pos, unit.asked = rows or {}, 1, false
  if err then unit.err, unit.done = err, true end
end

-- open() -> a window (fanout.window's add, take, pump, close) taking requests
-- { method, params } (one plain call) or { batch = { keys, cmd, methods } }.
-- make_error(code, description, method) builds the error of a failed call
-- inside a batch. The iterator returns each row; on a failure it returns
-- false, err once (after every row before it), then ends.
function Pager:iterator(open, make_error)
  local queue, head, finished, win = {}, 1, false, nil
  -- The units with a request in flight, in the order sent: sent[first..last].
  local sent = { first = 1, last = 0 }
  local function finish()
    finished = true
    if win then win.close() end
  end
  local function advance()
    self:fill(queue, head, win, sent)
    self:receive(win, sent, make_error)
    self:fill(queue, head, win, sent)
  end
  return function()
    if finished then return nil end
    win = win or open()
    while true do
      local unit = queue[head]
      if not unit then
        unit = self:next_unit()
        if not unit then
          finish()
          return nil
        end
        queue[head] = unit
      end
      local row = unit.rows[unit.pos]
      if row ~= nil then
        unit.rows[unit.pos], unit.pos = nil, unit.pos + 1
        -- While the caller works on the rows, the requests in flight go on.
        if unit.pos % PUMP == 0 then
          local ok, err = pcall(win.pump)
          if not ok then
            finish()
            error(err, 0)
          end
        end
        return row
      end
      if unit.err then
        finish()
        return false, unit.err
      end
      if unit.done then
        queue[head], head = nil, head + 1
      else
        local ok, err = pcall(advance)
        if not ok then
          finish()
          error(err, 0)
        end
      end
    end
  end
end

return M
