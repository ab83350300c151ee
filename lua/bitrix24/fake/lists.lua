-- crm.lead.list and crm.contact.list of the fake portal (FACTS §10): filter,
-- order, select and pages of 50. Returns a table method name ->
-- handler(portal, params), as bitrix24.fake.lead_contact does.

local json = require "bitrix24.fake.json"
local php = require "bitrix24.fake.php"
local answers = require "bitrix24.fake.answers"
local records = require "bitrix24.fake.records"

local omap, set, php_pairs = json.omap, json.set, json.php_pairs
local intval = php.intval
local ok = answers.ok
local can_read = records.can_read

local PAGE_SIZE = 50

local DEFAULT_SELECT = {
  lead = { "ID", "TITLE", "NAME", "LAST_NAME", "STATUS_ID" },
  contact = { "ID", "NAME", "LAST_NAME" },
}

-- Field values come out as strings, as real crm.*.list does (IDs too).
local function field_text(v)
  if v == nil or v == json.null then return json.null end
  if type(v) == "number" then return json.number_text(json.integral(v)) end
  if type(v) == "boolean" then return v and "Y" or "N" end
  return v
end

local function compare(a, b)
  local na, nb = tonumber(a), tonumber(b)
  if na and nb then
    if na == nb then return 0 end
    return na < nb and -1 or 1
  end
  a, b = tostring(a), tostring(b)
  if a == b then return 0 end
  return a < b and -1 or 1
end

local function one_of(value, list)
  for _, kv in ipairs(php_pairs(list)) do
    if compare(value, kv[2]) == 0 then return true end
  end
  return false
end

-- A comparison with an array value holds when it holds for any element,
-- each element read as a number when it is an array itself (PHP intval: 1
-- when not empty). That is what a chained `>ID` gets after a short page: a
-- $result reference to row 49 becomes the whole page of rows (FACTS §11), so
-- the condition turns into ID > 1 and the rows already returned come back.
-- An empty array matches nothing. Which rows a real portal returns then is
-- not documented; the fake answers this way so that a client that does not
-- check chained pages sees duplicates, as another SDK's users reported.
local function comparison(holds)
  return function(v, want)
    if type(want) ~= "table" then return holds(compare(v, want)) end
    for _, kv in ipairs(php_pairs(want)) do
      local w = kv[2]
      if type(w) == "table" then w = intval(w) end
      if holds(compare(v, w)) then return true end
    end
    return false
  end
end

local RANGE_OPS = {
  [">"] = function(c) return c > 0 end,
  ["<"] = function(c) return c < 0 end,
  [">="] = function(c) return c >= 0 end,
  ["<="] = function(c) return c <= 0 end,
}

-- One filter condition: "<op><FIELD>" => value.
local FILTER_OPS = {
  [""] = function(v, want) return type(want) == "table" and one_of(v, want) or compare(v, want) == 0 end,
  ["="] = function(v, want) return type(want) == "table" and one_of(v, want) or compare(v, want) == 0 end,
  ["@"] = function(v, want) return type(want) == "table" and one_of(v, want) or compare(v, want) == 0 end,
  ["!"] = function(v, want) return not (type(want) == "table" and one_of(v, want) or compare(v, want) == 0) end,
  ["!="] = function(v, want) return compare(v, want) ~= 0 end,
  ["%"] = function(v, want) return tostring(v):lower():find(tostring(want):lower(), 1, true) ~= nil end,
}
for op, holds in pairs(RANGE_OPS) do FILTER_OPS[op] = comparison(holds) end

local function parse_filter(filter)
  local conds = {}
  for _, kv in ipairs(php_pairs(filter)) do
    local op, field = tostring(kv[1]):match("^([!<>=@%%]*)(.-)$")
    if FILTER_OPS[op] and field ~= "" then
      conds[#conds + 1] = { op = op, test = FILTER_OPS[op], field = field, value = kv[2] }
    end
  end
  return conds
end

local function matches(rec, conds)
  for _, c in ipairs(conds) do
    local v = rec.fields[c.field]
    if v == nil or v == json.null or not c.test(v, c.value) then return false end
  end
  return true
end

local function sort_records(rows, order)
  local keys = {}
  for _, kv in ipairs(php_pairs(order)) do
    keys[#keys + 1] = { field = tostring(kv[1]), desc = tostring(kv[2]):upper() == "DESC" }
  end
  if #keys == 0 then keys[1] = { field = "ID", desc = false } end
  table.sort(rows, function(a, b)
    for _, k in ipairs(keys) do
      local va, vb = a.fields[k.field], b.fields[k.field]
      if va ~= nil and vb ~= nil then
        local c = compare(va, vb)
        if c ~= 0 then
          if k.desc then return c > 0 end
          return c < 0
        end
      end
    end
    return a.fields.ID < b.fields.ID
  end)
end

-- The field names of `select`, read once per call.
local function selected_names(select)
  local names = {}
  for _, kv in ipairs(php_pairs(select)) do names[#names + 1] = tostring(kv[2]) end
  return names
end

-- The names a row shows: the select's, the entity's defaults for none, or
-- nil for "*" (every field of each record: see select_fields).
local function shown_names(names, entity)
  if #names == 0 then return DEFAULT_SELECT[entity] end
  for _, n in ipairs(names) do
    if n == "*" then return nil end
  end
  return names
end

local function select_fields(rec, shown)
  local fields, row = rec.fields, omap()
  if not shown then
    shown = { "ID" }
    local others = {}
    for k in pairs(fields) do if k ~= "ID" then others[#others + 1] = k end end
    table.sort(others)
    for _, k in ipairs(others) do shown[#shown + 1] = k end
  end
  for _, n in ipairs(shown) do
    if fields[n] ~= nil then set(row, n, field_text(fields[n])) end
  end
  return row
end

--- Which rows, in which order ---------------------------------------------------

-- The numbers a range condition on ID compares with (see comparison), or nil
-- when one of them is not a number.
local function bound_values(want)
  if type(want) ~= "table" then return { tonumber(want) } end
  local out = {}
  for _, kv in ipairs(php_pairs(want)) do
    local w = kv[2]
    out[#out + 1] = type(w) == "table" and intval(w) or tonumber(w)
    if out[#out] == nil then return nil end
  end
  return out
end

-- Narrow ids[lo..hi] by one range condition on ID; nil when it cannot be
-- done by position. "> any of xs" is "> min(xs)", "< any of xs" is "< max(xs)".
local function narrow(store, lo, hi, op, want)
  local xs = bound_values(want)
  if not xs or (type(want) ~= "table" and #xs == 0) then return nil end
  if #xs == 0 then return lo, lo - 1 end
  local low = op:sub(1, 1) == ">"
  local x = xs[1]
  for _, v in ipairs(xs) do
    if (low and v < x) or (not low and v > x) then x = v end
  end
  if op == ">" then return math.max(lo, records.bound(store, x, true)), hi end
  if op == ">=" then return math.max(lo, records.bound(store, x, false)), hi end
  if op == "<" then return lo, math.min(hi, records.bound(store, x, false) - 1) end
  return lo, math.min(hi, records.bound(store, x, true) - 1)
end

-- The matching rows as (count, row(i) for i = 1..count) without looking at
-- every record, when every condition is a range on ID, the order is by ID
-- only and every record is readable: then they are a slice of the ascending
-- ids. That keeps a page of 100,000 generated leads cheap. Nil otherwise.
local function id_slice(store, conds, order)
  if store.hidden > 0 then return nil end
  local desc = false
  for _, kv in ipairs(php_pairs(order)) do
    if tostring(kv[1]) ~= "ID" then return nil end
    desc = tostring(kv[2]):upper() == "DESC"
  end
  local lo, hi = 1, #store.ids
  for _, c in ipairs(conds) do
    if c.field ~= "ID" or not RANGE_OPS[c.op] then return nil end
    lo, hi = narrow(store, lo, hi, c.op, c.value)
    if not lo then return nil end
  end
  return math.max(0, hi - lo + 1), function(i)
    return records.at(store, desc and hi - i + 1 or lo + i - 1)
  end
end

-- Every readable record that matches, sorted: the general way.
local function scan(store, conds, order)
  local rows = {}
  for i = 1, #store.ids do
    local rec = records.at(store, i)
    if can_read(rec) and matches(rec, conds) then rows[#rows + 1] = rec end
  end
  sort_records(rows, order)
  return #rows, function(i) return rows[i] end
end

-- Pages of 50. `start` is read with intval and picks a page, not a row: the
-- old CRM lists ask for page intval(start / 50) + 1, so start=70 answers rows
-- 50..99 as start=50 does, and `next` is always a multiple of 50 (FACTS §10
-- [src], IRestService::getNavData). start < 0 skips the count: up to 50 rows,
-- total 0, no next.
--
-- The count is what costs on a real portal (FACTS §11): a counted call
-- (start >= 0) takes count_cost_per_1000_rows seconds for every 1000 records
-- of the table, returned as `work` for the pipeline to charge and wait.
local function list_method(entity, store_name)
  return function(portal, params)
    local store = portal[store_name]
    local conds = parse_filter(params.filter)
    local count, row = id_slice(store, conds, params.order)
    if not count then count, row = scan(store, conds, params.order) end
    local start = intval(params.start)
    local offset = start < 0 and 0 or json.integral(math.floor(start / PAGE_SIZE) * PAGE_SIZE)
    local result, shown = {}, shown_names(selected_names(params.select), entity)
    for i = offset + 1, math.min(offset + PAGE_SIZE, count) do
      result[#result + 1] = select_fields(row(i), shown)
    end
    if start < 0 then return ok(result, 0, nil) end
    local nxt = offset + PAGE_SIZE < count and json.integral(offset + PAGE_SIZE) or nil
    local out = ok(result, count, nxt)
    out.work = (portal.cfg.count_cost_per_1000_rows or 0) * #store.ids / 1000
    return out
  end
end

local list_methods = {
  ["crm.lead.list"] = list_method("lead", "leads"),
  ["crm.contact.list"] = list_method("contact", "contacts"),
}

return list_methods
