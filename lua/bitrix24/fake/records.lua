-- The CRM records of the fake portal: leads and contacts loaded from a data
-- set (bitrix24.fake.data, or a JSON file of the same schema), each kept as
-- { fields, access, contacts } in a table { by_id, ids (ascending) }.

local json = require "bitrix24.fake.json"
local php = require "bitrix24.fake.php"

local php_pairs, intval = json.php_pairs, php.intval

local records = {}

-- Copy one lead/contact record out of the data set (Lua or decoded JSON).
local function load_record(src, with_contacts)
  local rec = { fields = {}, access = src.access or "write", contacts = {} }
  for k, v in pairs(src) do
    if k ~= "access" and k ~= "contacts" then rec.fields[k] = v end
  end
  rec.fields.ID = intval(src.ID)
  if with_contacts then
    for _, kv in ipairs(php_pairs(src.contacts)) do
      local b = kv[2]
      rec.contacts[#rec.contacts + 1] = {
        CONTACT_ID = intval(b.CONTACT_ID),
        SORT = b.SORT ~= nil and intval(b.SORT) or 10,
        ROLE_ID = intval(b.ROLE_ID),
        IS_PRIMARY = b.IS_PRIMARY == "Y" and "Y" or "N",
      }
    end
  end
  return rec
end

-- Records with a positive id, the first of each id; ids ascending.
function records.load_table(list, with_contacts)
  local by_id, ids = {}, {}
  for _, kv in ipairs(php_pairs(list)) do
    local rec = load_record(kv[2], with_contacts)
    local id = rec.fields.ID
    if id > 0 and not by_id[id] then
      by_id[id] = rec
      ids[#ids + 1] = id
    end
  end
  table.sort(ids)
  return { by_id = by_id, ids = ids }
end

-- A data set from a JSON file (schema: see bitrix24.fake.data).
function records.load_data(path)
  local f = assert(io.open(path, "rb"))
  local text = f:read("*a")
  f:close()
  local data, err = json.decode(text)
  if type(data) ~= "table" then error("bad data file " .. path .. ": " .. tostring(err)) end
  return data
end

function records.can_read(rec) return rec.access ~= "none" end
function records.can_update(rec) return rec.access ~= "none" and rec.access ~= "read" end

return records
