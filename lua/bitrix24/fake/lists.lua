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
  if type(v) == "number" then return json.encode(json.integral(v)) end
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

-- One filter condition: "<op><FIELD>" => value.
local FILTER_OPS = {
  [""] = function(v, want) return type(want) == "table" and one_of(v, want) or compare(v, want) == 0 end,
  ["="] = function(v, want) return type(want) == "table" and one_of(v, want) or compare(v, want) == 0 end,
  ["@"] = function(v, want) return type(want) == "table" and one_of(v, want) or compare(v, want) == 0 end,
  ["!"] = function(v, want) return not (type(want) == "table" and one_of(v, want) or compare(v, want) == 0) end,
  ["!="] = function(v, want) return compare(v, want) ~= 0 end,
  [">"] = function(v, want) return compare(v, want) > 0 end,
  ["<"] = function(v, want) return compare(v, want) < 0 end,
  [">="] = function(v, want) return compare(v, want) >= 0 end,
  ["<="] = function(v, want) return compare(v, want) <= 0 end,
  ["%"] = function(v, want) return tostring(v):lower():find(tostring(want):lower(), 1, true) ~= nil end,
}

local function parse_filter(filter)
  local conds = {}
  for _, kv in ipairs(php_pairs(filter)) do
    local op, field = tostring(kv[1]):match("^([!<>=@%%]*)(.-)$")
    if FILTER_OPS[op] and field ~= "" then
      conds[#conds + 1] = { test = FILTER_OPS[op], field = field, value = kv[2] }
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

local function select_fields(rec, select, entity)
  local names = {}
  for _, kv in ipairs(php_pairs(select)) do names[#names + 1] = tostring(kv[2]) end
  local all = #names == 0 and DEFAULT_SELECT[entity] or nil
  for _, n in ipairs(names) do
    if n == "*" then
      all = { "ID" }
      local others = {}
      for k in pairs(rec.fields) do if k ~= "ID" then others[#others + 1] = k end end
      table.sort(others)
      for _, k in ipairs(others) do all[#all + 1] = k end
    end
  end
  local row = omap()
  for _, n in ipairs(all or names) do
    if rec.fields[n] ~= nil then set(row, n, field_text(rec.fields[n])) end
  end
  return row
end

-- Pages of 50. `start` is read with intval and picks a page, not a row: the
-- old CRM lists ask for page intval(start / 50) + 1, so start=70 answers rows
-- 50..99 as start=50 does, and `next` is always a multiple of 50 (FACTS §10
-- [src], IRestService::getNavData). start < 0 skips the count: up to 50 rows,
-- total 0, no next.
local function list_method(entity, store_name)
  return function(portal, params)
    local store = portal[store_name]
    local conds = parse_filter(params.filter)
    local rows = {}
    for _, id in ipairs(store.ids) do
      local rec = store.by_id[id]
      if can_read(rec) and matches(rec, conds) then rows[#rows + 1] = rec end
    end
    sort_records(rows, params.order)
    local start = intval(params.start)
    local offset = start < 0 and 0 or json.integral(math.floor(start / PAGE_SIZE) * PAGE_SIZE)
    local result = {}
    for i = offset + 1, math.min(offset + PAGE_SIZE, #rows) do
      result[#result + 1] = select_fields(rows[i], params.select, entity)
    end
    if start < 0 then return ok(result, 0, nil) end
    local nxt = offset + PAGE_SIZE < #rows and json.integral(offset + PAGE_SIZE) or nil
    return ok(result, #rows, nxt)
  end
end

local list_methods = {
  ["crm.lead.list"] = list_method("lead", "leads"),
  ["crm.contact.list"] = list_method("contact", "contacts"),
}

return list_methods
