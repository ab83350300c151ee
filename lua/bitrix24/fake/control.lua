-- The /_fake/ control endpoints of the fake portal: what specs and the
-- server helper use to inspect and steer it (no auth, not logged). Bodies
-- are JSON; answers are JSON with status 200 (400 for a bad fault).

local json = require "bitrix24.fake.json"
local php = require "bitrix24.fake.php"
local answers = require "bitrix24.fake.answers"

local omap, set = json.omap, json.set
local obj, json_response, error_body = answers.obj, answers.json_response, answers.error_body

local endpoints = {} -- name -> function(portal, body) returning status, body

function endpoints.info(portal) return 200, portal:info() end

function endpoints.requests(portal) return 200, portal:requests() end
function endpoints.stats(portal) return 200, portal:stats() end

function endpoints.reset(portal, body)
  portal:reset(body)
  return 200, obj("ok", true)
end

function endpoints.fault(portal, body)
  if php.truthy(body.clear) then
    portal.faults:clear()
    return 200, obj("ok", true, "faults", 0)
  end
  local ok, res = pcall(portal.faults.add, portal.faults, body)
  if not ok then return 400, error_body("BAD_FAULT", tostring(res)) end
  return 200, obj("ok", true, "faults", res)
end

function endpoints.config(portal, body)
  local cfg = portal:configure(body)
  return 200, obj("ok", true, "rate", cfg.rate, "burst", cfg.burst, "op_limit", cfg.op_limit,
    "token_ttl", cfg.token_ttl, "op_cost", cfg.op_cost, "latency", cfg.latency, "call_cost", cfg.call_cost,
    "count_cost_per_1000_rows", cfg.count_cost_per_1000_rows)
end

-- What churn did so far, and where the leads stand.
local function churn_report(portal, extra)
  local ids = portal.leads.ids
  local out = obj("ok", true, "count", #ids, "first_id", ids[1] or 0, "last_id", ids[#ids] or 0,
    "list_calls", portal.churn.list_calls, "deleted", portal.churn.deleted, "appended", portal.churn.appended)
  for k, v in pairs(extra or {}) do set(out, k, v) end
  return out
end

-- { delete = [ids], append = n }: at once. Answers what it deleted (the
-- ids that existed) and appended, and the churn report.
function endpoints.leads(portal, body)
  local ok, ids, n = pcall(portal.churn.read_change, body)
  if not ok then return 400, error_body("BAD_CHANGE", tostring(ids)) end
  local deleted, appended = portal.churn:change(portal.leads, ids, n)
  return 200, churn_report(portal, { deleted_now = deleted, appended_now = appended })
end

-- { every = K, delete = [ids], delete_count = d, append = m, times = t }
-- sets the rule; { clear = true } removes it; {} only reports.
function endpoints.churn(portal, body)
  if php.truthy(body.clear) then
    portal.churn:clear()
  elseif body.every ~= nil then
    local ok, err = pcall(portal.churn.set, portal.churn, body)
    if not ok then return 400, error_body("BAD_CHURN", tostring(err)) end
  end
  return 200, churn_report(portal)
end

function endpoints.expire_tokens(portal)
  portal:expire_tokens()
  return 200, obj("ok", true)
end

-- Firing events, ONAPPINSTALL and ONAPPUNINSTALL, what handlers answered.
for name, endpoint in pairs(require("bitrix24.fake.events").CONTROL) do endpoints[name] = endpoint end

local control = {}

function control.handle(portal, req)
  local name = req.path:match("^/_fake/([%w_]+)/?$")
  local endpoint = name and endpoints[name]
  if not endpoint then
    return json_response(404, error_body("NOT_FOUND", "Unknown control endpoint"))
  end
  local body = json.decode(req.body or "")
  if type(body) ~= "table" then body = omap() end
  local status, out = endpoint(portal, body)
  local res = json_response(status, out)
  res.error_code = nil
  return res
end

return control
