-- Events of the fake portal (FACTS §12): event.bind/unbind/get, the offline
-- queue (event.offline.get/clear/error/list), app.info, crm.lead.add/update/
-- delete that fire ONCRMLEAD* events, and the /_fake/ control endpoints that
-- fire events and send ONAPPINSTALL / ONAPPUNINSTALL.
--
-- Plain Lua: firing an online event only appends { url, body, event } to
-- portal.event_outbox; the host POSTs them (bitrix24.fake.deliver in nginx,
-- from a timer, so the portal's worker never waits for a handler) and
-- reports each answer with events.delivered. Bodies are forms with PHP
-- keys, as Bitrix24's queue server sends them (FACTS §12.1).
--
-- Not emulated: auth_type users (the API user is the administrator),
-- auth_connector queues, offline `order` (always TIMESTAMP_X then ID),
-- ONOFFLINEEVENT notifications, event.test. Error wordings that FACTS
-- gives only as text carry an approximated code.

local json = require "bitrix24.fake.json"
local php = require "bitrix24.fake.php"
local answers = require "bitrix24.fake.answers"
local records = require "bitrix24.fake.records"

local obj, ok, fail, ERR = answers.obj, answers.ok, answers.fail, answers.ERR
local intval, truthy = php.intval, php.truthy

local events = {}

local KNOWN = { ONCRMLEADADD = true, ONCRMLEADUPDATE = true, ONCRMLEADDELETE = true, ONAPPINSTALL = true,
  ONAPPUNINSTALL = true, ONOFFLINEEVENT = true, ONAPPTEST = true }

-- [inferred] the error a method allowed to applications only gives any
-- other auth (test-handler.md: "an authorization type error").
local function wrong_auth()
  return fail(401, "WRONG_AUTH_TYPE", "Current authorization type is denied for this method")
end

--- State --------------------------------------------------------------------

-- Bindings and the queue go with reset(); the application token stays
-- (it belongs to the installation, not to the data).
function events.reset(portal)
  portal.application_token = portal.application_token or portal.random_string(32)
  portal.bindings, portal.next_binding = {}, 1
  portal.offline_queue, portal.next_offline_id, portal.message_ids = {}, 1, {}
  portal.event_outbox, portal.event_deliveries = {}, {}
end

-- Called for every request: where the portal is reached (for the auth
-- block of events) and whether this request is an application's.
function events.begin(portal, req)
  if not portal.bindings then events.reset(portal) end
  if req.base_url then portal.base_url = req.base_url end
  portal.request_is_app = (req.path or ""):match("^/rest/%d+/") == nil
end

--- Form bodies (PHP http_build_query) ---------------------------------------------

local function urlencode(s)
  return (tostring(s):gsub("[^%w%-%._~ ]", function(c) return string.format("%%%02X", c:byte()) end):gsub(" ", "+"))
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  return keys
end

local function build(out, prefix, v)
  if type(v) == "table" then
    local seq = #v > 0
    for _, k in ipairs(sorted_keys(v)) do
      local key = seq and type(k) == "number" and tostring(k - 1) or tostring(k)
      build(out, prefix and (prefix .. "[" .. key .. "]") or key, v[k])
    end
  elseif v ~= nil then
    if type(v) == "boolean" then v = v and "1" or "" end
    if type(v) == "number" then v = json.encode(json.integral(v)) end
    out[#out + 1] = urlencode(prefix) .. "=" .. urlencode(v)
  end
end

function events.form(t)
  local out = {}
  build(out, nil, t)
  return table.concat(out, "&")
end

--- Firing -------------------------------------------------------------------

local function base(portal) return portal.base_url or "http://127.0.0.1" end

-- The auth block of an event (auth-params-in-events.md); `with_tokens`
-- for events a user's action started (and ONAPPINSTALL).
local function auth_block(portal, with_tokens, refresh)
  local b = base(portal)
  local a = { domain = b:match("^https?://(.*)$"), client_endpoint = b .. "/rest/",
    server_endpoint = b .. "/rest/", member_id = portal.member_id, application_token = portal.application_token }
  if with_tokens then
    a.access_token, a.expires_in, a.scope, a.status = portal.access_token, portal.cfg.token_ttl, "crm", "L"
    if refresh then a.refresh_token = portal.refresh_token end
  end
  return a
end

local function post(portal, url, body, name)
  portal.event_outbox[#portal.event_outbox + 1] = { url = url, body = body, event = name }
end

-- The offline record of (event, object): the current state, not history
-- (FACTS §12.4): a record nobody reserved yet is updated in place.
local function queue(portal, name, data)
  local id = type(data) == "table" and type(data.FIELDS) == "table" and data.FIELDS.ID or ""
  local key = name .. ":" .. tostring(id)
  local mid = portal.message_ids[key]
  if not mid then
    mid = string.format("%032x", #sorted_keys(portal.message_ids) + 1)
    portal.message_ids[key] = mid
  end
  local now = portal.clock()
  for _, r in ipairs(portal.offline_queue) do
    if r.MESSAGE_ID == mid and r.PROCESS_ID == "" and r.ERROR == "0" then
      r.ts, r.EVENT_DATA = now, data
      return
    end
  end
  portal.offline_queue[#portal.offline_queue + 1] = { ID = portal.next_offline_id, ts = now, EVENT_NAME = name,
    EVENT_DATA = data, MESSAGE_ID = mid, PROCESS_ID = "", ERROR = "0" }
  portal.next_offline_id = portal.next_offline_id + 1
end

--- Fire event `name` with `data` to its bindings: online ones get a POST,
--- offline ones a queue record. Returns how many of each.
function events.fire(portal, name, data, auth_overrides)
  local online, offline = 0, 0
  for _, b in ipairs(portal.bindings) do
    if b.event == name then
      if b.offline then
        offline = offline + 1
        queue(portal, name, data)
      else
        online = online + 1
        local auth = auth_block(portal, true)
        for k, v in pairs(auth_overrides or {}) do auth[k] = v end
        post(portal, b.handler, events.form { event = name, event_handler_id = b.id, data = data,
          ts = math.floor(portal.clock()), auth = auth }, name)
      end
    end
  end
  return online, offline
end

--- The host reports what a handler answered (status) or why it failed.
function events.delivered(portal, item, status, err)
  portal.event_deliveries[#portal.event_deliveries + 1] = obj("url", item.url, "event", item.event,
    "status", status or 0, "error", err)
end

--- Methods --------------------------------------------------------------------

local M = {}

local function app_only(fn)
  return function(portal, params)
    if not portal.request_is_app then return wrong_auth() end
    return fn(portal, params)
  end
end

M["event.bind"] = app_only(function(portal, p)
  local name = type(p.event) == "string" and p.event:upper() or ""
  if not KNOWN[name] then return fail(400, "ERROR_EVENT_NOT_FOUND", "Event not found") end
  local offline = p.event_type == "offline"
  local handler = not offline and p.handler or ""
  if not offline and (type(handler) ~= "string" or handler == "") then
    return fail(400, "ERROR_ARGUMENT", "HANDLER was not passed")   -- [approx] code
  end
  for _, b in ipairs(portal.bindings) do
    if b.event == name and b.handler == handler and b.offline == offline then
      return fail(400, "ERROR_ARGUMENT", "Unable to set event handler")   -- [approx] code
    end
  end
  portal.bindings[#portal.bindings + 1] = { id = portal.next_binding, event = name, handler = handler,
    offline = offline }
  portal.next_binding = portal.next_binding + 1
  return ok(true)
end)

M["event.unbind"] = app_only(function(portal, p)
  local name = type(p.event) == "string" and p.event:upper() or nil
  local offline = p.event_type == "offline"
  local kept, count = {}, 0
  for _, b in ipairs(portal.bindings) do
    if (name == nil or b.event == name) and b.offline == offline
        and (offline or p.handler == nil or b.handler == p.handler) then
      count = count + 1
    else
      kept[#kept + 1] = b
    end
  end
  portal.bindings = kept
  return ok(obj("count", count))
end)

local function binding_rows(portal)
  local out = {}
  for i, b in ipairs(portal.bindings) do
    out[i] = obj("event", b.event, "handler", b.handler, "auth_type", "0", "offline", b.offline and 1 or 0)
  end
  return out
end

M["event.get"] = app_only(function(portal) return ok(binding_rows(portal)) end)

M["app.info"] = app_only(function(portal)
  return ok(obj("ID", 1, "CODE", portal.client_id, "VERSION", 1, "STATUS", "L", "INSTALLED", true,
    "PAYMENT_EXPIRED", "N", "DAYS", json.null, "LANGUAGE_ID", "en"))
end)

-- Offline filter: { [">=ID"] = 1, ["=EVENT_NAME"] = "..." }.
local function matches(r, filter)
  if type(filter) ~= "table" then return true end
  for k, want in pairs(filter) do
    local op, field = tostring(k):match("^([=<>!]*)(.+)$")
    local v = field == "ID" and r.ID or r[field]
    if field == "ID" then want = intval(want) end
    if v ~= nil then
      local holds
      if op == ">=" then holds = v >= want elseif op == ">" then holds = v > want
      elseif op == "<=" then holds = v <= want elseif op == "<" then holds = v < want
      elseif op == "!" or op == "!=" then holds = v ~= want else holds = tostring(v) == tostring(want) end
      if not holds then return false end
    end
  end
  return true
end

local function by_time(a, b)
  if a.ts ~= b.ts then return a.ts < b.ts end
  return a.ID < b.ID
end

local function row(r, full)
  local t = obj("ID", tostring(r.ID), "TIMESTAMP_X", answers.iso_date(r.ts), "EVENT_NAME", r.EVENT_NAME,
    "EVENT_DATA", r.EVENT_DATA, "EVENT_ADDITIONAL", false, "MESSAGE_ID", r.MESSAGE_ID)
  if full then json.set(t, "PROCESS_ID", r.PROCESS_ID); json.set(t, "ERROR", r.ERROR) end
  return t
end

local function remove(portal, pred)
  local kept = {}
  for _, r in ipairs(portal.offline_queue) do
    if not pred(r) then kept[#kept + 1] = r end
  end
  portal.offline_queue = kept
end

local function set_of(list)
  local s = {}
  if type(list) == "table" then for _, v in pairs(list) do s[tostring(v)] = true end end
  return s
end

M["event.offline.get"] = app_only(function(portal, p)
  local limit = p.limit ~= nil and intval(p.limit) or 50
  local clear = p.clear == nil or truthy(p.clear)
  local pid = type(p.process_id) == "string" and p.process_id ~= "" and p.process_id or nil
  local with_errors = truthy(p.error)
  local picked = {}
  local rows = {}
  for _, r in ipairs(portal.offline_queue) do rows[#rows + 1] = r end
  table.sort(rows, by_time)
  -- A process's own unhandled records first, then free ones.
  for pass = 1, 2 do
    for _, r in ipairs(rows) do
      local mine = pid and r.PROCESS_ID == pid
      local take = (pass == 1 and mine) or (pass == 2 and r.PROCESS_ID == "")
      if take and (r.ERROR == "0" or with_errors) and matches(r, p.filter) and #picked < limit then
        picked[#picked + 1] = r
      end
    end
  end
  if #picked == 0 and not pid then return ok(obj("process_id", json.null, "events", {})) end
  pid = pid or portal.random_string(32)
  local out, taken = {}, {}
  for i, r in ipairs(picked) do
    out[i] = row(r)
    r.PROCESS_ID = pid
    taken[r] = true
  end
  if clear then remove(portal, function(r) return taken[r] end) end
  return ok(obj("process_id", pid, "events", out))
end)

M["event.offline.clear"] = app_only(function(portal, p)
  local pid = p.process_id
  if type(pid) ~= "string" or pid == "" then return fail(400, "ERROR_ARGUMENT", "PROCESS_ID is required") end
  local ids, mids = set_of(p.id), set_of(p.message_id)
  local by_id, by_mid = p.id ~= nil, p.id == nil and p.message_id ~= nil
  remove(portal, function(r)
    if r.PROCESS_ID ~= pid then return false end
    if by_id then return ids[tostring(r.ID)] == true end
    if by_mid then return mids[r.MESSAGE_ID] == true end
    return true
  end)
  return ok(true)
end)

M["event.offline.error"] = app_only(function(portal, p)
  local pid = p.process_id
  if type(pid) ~= "string" or pid == "" then return fail(400, "ERROR_ARGUMENT", "PROCESS_ID is required") end
  local mids = set_of(p.message_id)
  for _, r in ipairs(portal.offline_queue) do
    if r.PROCESS_ID == pid and mids[r.MESSAGE_ID] then r.ERROR = "1" end
  end
  return ok(true)
end)

M["event.offline.list"] = app_only(function(portal, p)
  local rows = {}
  for _, r in ipairs(portal.offline_queue) do
    if matches(r, p.filter) then rows[#rows + 1] = r end
  end
  table.sort(rows, function(a, b) return a.ID < b.ID end)
  local start = math.max(0, intval(p.start))
  local out = {}
  for i = start + 1, math.min(start + 50, #rows) do out[#out + 1] = row(rows[i], true) end
  return ok(out, #rows, start + 50 < #rows and start + 50 or nil)
end)

-- Leads changed through the API fire ONCRMLEAD* (FACTS §12.5: only the id).
local function apply_fields(rec, fields)
  if type(fields) ~= "table" then return end
  for k, v in pairs(fields) do
    if k ~= "ID" and type(k) == "string" then rec.fields[k] = v end
  end
end

M["crm.lead.get"] = function(portal, p)
  local id = intval(p.id or p.ID)
  local rec = id > 0 and records.find(portal.leads, id)
  if not rec or not records.can_read(rec) then return ERR.not_found() end
  local out = obj("ID", tostring(id))
  for _, k in ipairs(sorted_keys(rec.fields)) do
    if k ~= "ID" then json.set(out, k, rec.fields[k]) end
  end
  return ok(out)
end

M["crm.lead.add"] = function(portal, p)
  local id = records.append(portal.leads, 1)[1]
  apply_fields(records.find(portal.leads, id, true), p.fields)
  events.fire(portal, "ONCRMLEADADD", { FIELDS = { ID = id } })
  return ok(id)
end

M["crm.lead.update"] = function(portal, p)
  local id = intval(p.id or p.ID)
  local rec = id > 0 and records.find(portal.leads, id, true)
  if not rec then return ERR.not_found() end
  apply_fields(rec, p.fields)
  events.fire(portal, "ONCRMLEADUPDATE", { FIELDS = { ID = id } })
  return ok(true)
end

M["crm.lead.delete"] = function(portal, p)
  local id = intval(p.id or p.ID)
  if id <= 0 or not records.delete(portal.leads, id) then return ERR.not_found() end
  events.fire(portal, "ONCRMLEADDELETE", { FIELDS = { ID = id } })
  return ok(true)
end

events.METHODS = M

--- Control endpoints (/_fake/...) --------------------------------------------------

local C = {}

-- What the spec needs to see: the token, bindings, answers of handlers, the queue.
function C.events(portal)
  local queue_rows = {}
  for i, r in ipairs(portal.offline_queue) do queue_rows[i] = row(r, true) end
  return 200, obj("application_token", portal.application_token, "bindings", binding_rows(portal),
    "deliveries", portal.event_deliveries, "queue", queue_rows)
end

-- { event, data, auth = overrides }: fire to the bindings; { url = ... }: to that URL only.
function C.fire(portal, body)
  local name = type(body.event) == "string" and body.event:upper() or nil
  if not name then return 400, answers.error_body("BAD_EVENT", "event is required") end
  if type(body.url) == "string" then
    local auth = auth_block(portal, true)
    for k, v in pairs(type(body.auth) == "table" and body.auth or {}) do auth[k] = v end
    post(portal, body.url, events.form { event = name, event_handler_id = 0, data = body.data,
      ts = math.floor(portal.clock()), auth = auth }, name)
    return 200, obj("ok", true, "online", 1, "offline", 0)
  end
  local online, offline = events.fire(portal, name, body.data, type(body.auth) == "table" and body.auth or nil)
  return 200, obj("ok", true, "online", online, "offline", offline)
end

-- { url, auth = overrides }: ONAPPINSTALL with the installing user's tokens
-- (common/on-app-install.md), as the installation's handler receives it.
function C.install(portal, body)
  if type(body.url) ~= "string" then return 400, answers.error_body("BAD_URL", "url is required") end
  local auth = auth_block(portal, true, true)
  auth.expires = math.floor(portal.clock()) + portal.cfg.token_ttl
  for k, v in pairs(type(body.auth) == "table" and body.auth or {}) do auth[k] = v end
  post(portal, body.url, events.form { event = "ONAPPINSTALL", data = { VERSION = "1", ACTIVE = "Y",
    INSTALLED = "Y", LANGUAGE_ID = "en" }, ts = math.floor(portal.clock()), auth = auth }, "ONAPPINSTALL")
  return 200, obj("ok", true)
end

-- { url, clean }: ONAPPUNINSTALL (no tokens), and the app's bindings and
-- queue are gone, as its actions are on a real portal.
function C.uninstall(portal, body)
  if type(body.url) ~= "string" then return 400, answers.error_body("BAD_URL", "url is required") end
  local auth = auth_block(portal, false)
  for k, v in pairs(type(body.auth) == "table" and body.auth or {}) do auth[k] = v end
  post(portal, body.url, events.form { event = "ONAPPUNINSTALL", data = { LANGUAGE_ID = "en",
    CLEAN = truthy(body.clean) and 1 or 0 }, ts = math.floor(portal.clock()), auth = auth }, "ONAPPUNINSTALL")
  portal.bindings, portal.offline_queue = {}, {}
  return 200, obj("ok", true)
end

events.CONTROL = C

return events
