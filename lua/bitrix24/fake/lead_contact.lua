-- The six crm.lead.contact.* methods of the fake portal (FACTS §7): the
-- contacts bound to a lead. Returns a table method name -> handler(portal,
-- params), each handler returning an answers.ok(...) or answers.fail(...).

local json = require "bitrix24.fake.json"
local php = require "bitrix24.fake.php"
local answers = require "bitrix24.fake.answers"
local records = require "bitrix24.fake.records"

local omap, set, php_pairs = json.omap, json.set, json.php_pairs
local intval = php.intval
local obj, ok, fail, ERR = answers.obj, answers.ok, answers.fail, answers.ERR
local can_read, can_update = records.can_read, records.can_update

local BINDING_FIELDS = { { "SORT", "integer", false, "Sorting" }, { "IS_PRIMARY", "char", false, "Primary" },
  { "CONTACT_ID", "integer", true, "Contact" } }

local function binding_fields()
  local result = omap()
  for _, f in ipairs(BINDING_FIELDS) do
    set(result, f[1], obj("type", f[2], "isRequired", f[3], "isReadOnly", false, "isImmutable", false,
      "isMultiple", false, "isDynamic", false, "title", f[4]))
  end
  return result
end

-- Lead `id`/`ID` plus the right check. A lead that does not exist passes the
-- right check (the webhook user is an admin); callers decide what that means.
local function lead_for(portal, params, need_read, need_update)
  local raw = params.ID
  if raw == nil then raw = params.id end
  local id = intval(raw)
  if id <= 0 then return nil, ERR.owner_invalid() end
  local lead = records.find(portal.leads, id, need_update) -- kept: the caller may change it
  if lead and ((need_read and not can_read(lead)) or (need_update and not can_update(lead))) then
    return nil, ERR.access_denied()
  end
  return lead
end

-- Every contact bound or unbound must be readable (FACTS §7 [src]). The exact
-- wording of the real message is unknown; it starts with "[Contact #N]".
local function check_contacts(portal, ids)
  for _, cid in ipairs(ids) do
    local c = portal.contacts.by_id[cid]
    if not c or not can_read(c) then
      return fail(400, "", "[Contact #" .. cid .. "] Read access denied or contact not found.")
    end
  end
end

-- `fields` of add/delete: an array with a positive CONTACT_ID.
local function binding_contact(params)
  local fields = params.fields
  if type(fields) ~= "table" then
    return nil, fail(400, "", "The parameter 'fields' must be array.")
  end
  local cid = intval(fields.CONTACT_ID)
  if cid <= 0 then return nil, fail(400, "", "The parameter 'fields' is not valid.") end
  return cid, nil, fields
end

local function find_binding(lead, cid)
  for i, b in ipairs(lead.contacts) do
    if b.CONTACT_ID == cid then return i end
  end
end

local function binding_json(b)
  return obj("CONTACT_ID", b.CONTACT_ID, "SORT", b.SORT, "ROLE_ID", b.ROLE_ID, "IS_PRIMARY", b.IS_PRIMARY)
end

local binding_methods = {}

binding_methods["crm.lead.contact.fields"] = function()
  return ok(binding_fields())
end

-- Not a list method: every binding, SORT ascending, no total/next. A lead that
-- does not exist gives [] (no existence check, FACTS §7 [src]).
binding_methods["crm.lead.contact.items.get"] = function(portal, params)
  local lead, err = lead_for(portal, params, true, false)
  if err then return err end
  local rows = {}
  for i, b in ipairs(lead and lead.contacts or {}) do rows[i] = { b = b, i = i } end
  table.sort(rows, function(x, y)
    if x.b.SORT ~= y.b.SORT then return x.b.SORT < y.b.SORT end
    return x.i < y.i
  end)
  local result = {}
  for i, r in ipairs(rows) do result[i] = binding_json(r.b) end
  return ok(result)
end

-- Already bound -> result false (FACTS §7 [src]). Only the string "Y" makes a
-- binding primary; a new primary demotes the others. No automatic primary is
-- chosen here (FACTS gives that rule for items.set only).
binding_methods["crm.lead.contact.add"] = function(portal, params)
  local lead, err = lead_for(portal, params, false, true)
  if err then return err end
  if not lead then return ERR.not_found() end
  local cid, ferr, fields = binding_contact(params)
  if ferr then return ferr end
  local cerr = check_contacts(portal, { cid })
  if cerr then return cerr end
  if find_binding(lead, cid) then return ok(false) end
  local primary = fields.IS_PRIMARY == "Y"
  if primary then
    for _, b in ipairs(lead.contacts) do b.IS_PRIMARY = "N" end
  end
  lead.contacts[#lead.contacts + 1] = {
    CONTACT_ID = cid,
    SORT = fields.SORT ~= nil and intval(fields.SORT) or 10,
    ROLE_ID = 0,
    IS_PRIMARY = primary and "Y" or "N",
  }
  return ok(true)
end

-- Not bound -> result false (FACTS §7 [src]).
binding_methods["crm.lead.contact.delete"] = function(portal, params)
  local lead, err = lead_for(portal, params, false, true)
  if err then return err end
  if not lead then return ERR.not_found() end
  local cid, ferr = binding_contact(params)
  if ferr then return ferr end
  local cerr = check_contacts(portal, { cid })
  if cerr then return cerr end
  local i = find_binding(lead, cid)
  if not i then return ok(false) end
  table.remove(lead.contacts, i)
  return ok(true)
end

-- Normalise items.set input (FACTS §7 [src]): skip items without a positive
-- CONTACT_ID (and repeats), SORT defaults to (index+1)*10, only the first "Y"
-- stays primary, and with no "Y" the first item becomes primary.
local function normalise_items(items)
  local list, seen, has_primary = {}, {}, false
  for index, kv in ipairs(php_pairs(items)) do
    local item = kv[2]
    local cid = type(item) == "table" and intval(item.CONTACT_ID) or 0
    if cid > 0 and not seen[cid] then
      seen[cid] = true
      local primary = item.IS_PRIMARY == "Y" and not has_primary
      has_primary = has_primary or primary
      list[#list + 1] = {
        CONTACT_ID = cid,
        SORT = item.SORT ~= nil and intval(item.SORT) or index * 10,
        ROLE_ID = 0,
        IS_PRIMARY = primary and "Y" or "N",
      }
    end
  end
  if not has_primary and list[1] then list[1].IS_PRIMARY = "Y" end
  return list
end

binding_methods["crm.lead.contact.items.set"] = function(portal, params)
  local lead, err = lead_for(portal, params, false, true)
  if err then return err end
  if not lead then return ERR.not_found() end
  if type(params.items) ~= "table" then
    return fail(400, "", "The parameter 'items' must be array.")
  end
  local list = normalise_items(params.items)
  local touched = {}
  for _, b in ipairs(list) do touched[#touched + 1] = b.CONTACT_ID end
  for _, b in ipairs(lead.contacts) do touched[#touched + 1] = b.CONTACT_ID end
  local cerr = check_contacts(portal, touched)
  if cerr then return cerr end
  lead.contacts = list
  return ok(true)
end

-- Needs read and update rights; does not check that the lead exists (FACTS §7 [src]).
binding_methods["crm.lead.contact.items.delete"] = function(portal, params)
  local lead, err = lead_for(portal, params, true, true)
  if err then return err end
  if lead then
    local ids = {}
    for i, b in ipairs(lead.contacts) do ids[i] = b.CONTACT_ID end
    local cerr = check_contacts(portal, ids)
    if cerr then return cerr end
    lead.contacts = {}
  end
  return ok(true)
end

return binding_methods
