-- Default data set of the fake Bitrix24 portal.
--
-- `require "bitrix24.fake.data"` returns a callable table; each call builds a
-- fresh data set (so a portal reset never sees mutations of a previous run),
-- and data.generated_lead(id) gives one lead of a generated set. The same
-- schema is accepted from a JSON file by Portal.load_data(path):
--
--   {
--     "leads": [ { "ID": 1, "TITLE": "...", "NAME": "...", "LAST_NAME": "...",
--                  "STATUS_ID": "NEW", "ASSIGNED_BY_ID": 1, "DATE_CREATE": "...",
--                  "access": "write" | "read" | "none",      (optional, default "write")
--                  "contacts": [ { "CONTACT_ID": 1010, "SORT": 10, "ROLE_ID": 0,
--                                  "IS_PRIMARY": "Y" }, ... ] }, ... ],
--     "contacts": [ { "ID": 1001, "NAME": "...", "LAST_NAME": "...",
--                     "access": "read" | "none" }, ... ]
--   }
--
-- `access` is the right of the webhook/OAuth user: "none" = may not read,
-- "read" = may read but not change, "write" (default) = full rights.
-- Every other key of a lead/contact is a CRM field returned by *.list.
--
-- What the default set holds:
--   * contacts 1001..1300 (300). Contact 1300 is unreadable (access "none").
--   * leads 1..250 except the gaps 17, 51, 52, 99, 150, 199, plus 300, 305 and
--     1000: 247 leads, ids ascending.
--   * lead 1: the docs' example (crm-lead-contact-items-get.md):
--     contact 1010 (SORT 10, IS_PRIMARY "Y"), contact 1011 (SORT 20, "N").
--   * lead 2: no contacts.
--   * lead 13: access "none" (no read right -> 403 ACCESS_DENIED "Access denied!").
--     It has contacts, which nobody can see through the API.
--   * lead 14: access "read" (items.get works, changes -> 403 ACCESS_DENIED).
--   * every other lead: ids divisible by 10 have no contacts; the rest have
--     1..3 contacts chosen deterministically from 1001..1299 (see
--     contacts_for), SORT 10, 20, 30, the first one primary.

local FIRST_NAMES = { "Ivan", "Maria", "Olga", "Petr", "Anna", "Sergey", "Elena", "Dmitry", "Irina", "Pavel" }
local LAST_NAMES = { "Ivanov", "Petrova", "Sidorov", "Smirnova", "Kuznetsov", "Popova", "Volkov", "Orlova" }
local STATUSES = { "NEW", "IN_PROCESS", "PROCESSED", "CONVERTED", "JUNK" }

local LEAD_GAPS = { [17] = true, [51] = true, [52] = true, [99] = true, [150] = true, [199] = true }
local EXTRA_LEADS = { 300, 305, 1000 }

local function pick(list, n)
  return list[(n % #list) + 1]
end

local function binding(contact_id, sort, primary)
  return { CONTACT_ID = contact_id, SORT = sort, ROLE_ID = 0, IS_PRIMARY = primary and "Y" or "N" }
end

-- 1..3 distinct contacts from 1001..1299 for a lead, derived from its id only.
local function contacts_for(id)
  if id == 1 then
    return { binding(1010, 10, true), binding(1011, 20, false) }
  end
  if id == 2 or id % 10 == 0 then
    return {}
  end
  local list, seen = {}, {}
  for j = 0, id % 3 do
    local cid = 1001 + (id * 7 + j * 37) % 299
    if not seen[cid] then
      seen[cid] = true
      list[#list + 1] = binding(cid, (#list + 1) * 10, #list == 0)
    end
  end
  return list
end

-- The fields and contacts of lead `id`, as every lead of the set has them.
local function lead(id, bare)
  return {
    ID = id,
    TITLE = "Lead #" .. id,
    NAME = pick(FIRST_NAMES, id),
    LAST_NAME = pick(LAST_NAMES, id),
    STATUS_ID = pick(STATUSES, id),
    ASSIGNED_BY_ID = 1,
    DATE_CREATE = string.format("2024-%02d-%02dT10:00:00+03:00", id % 12 + 1, id % 28 + 1),
    access = (id == 13 and "none") or (id == 14 and "read") or nil,
    contacts = not bare and contacts_for(id) or nil,
  }
end

local function contact(id)
  return {
    ID = id,
    NAME = pick(FIRST_NAMES, id * 3),
    LAST_NAME = pick(LAST_NAMES, id),
    access = id == 1300 and "none" or nil,
  }
end

local data = {}

-- Lead `id` of a generated set (the --leads option): the same fields and
-- contacts as in the default set, and full rights on every lead; bare:
-- without its contacts.
function data.generated_lead(id, bare)
  local rec = lead(id, bare)
  rec.access = nil
  return rec
end

-- The same contacts alone (a generated record builds them when read).
data.generated_contacts = contacts_for

-- Calling the module builds the default set.
return setmetatable(data, { __call = function()
  local leads, contacts = {}, {}
  for id = 1, 250 do
    if not LEAD_GAPS[id] then leads[#leads + 1] = lead(id) end
  end
  for _, id in ipairs(EXTRA_LEADS) do
    leads[#leads + 1] = lead(id)
  end
  for id = 1001, 1300 do
    contacts[#contacts + 1] = contact(id)
  end
  return { leads = leads, contacts = contacts }
end })
