-- client:bind / client:unbind / client:event_bindings (FACTS §12.3):
-- event.bind, event.unbind and event.get. Bitrix24 accepts them with
-- application (OAuth) auth only, so a webhook client raises before
-- anything is sent: a programmer error, like any other misuse.

local errors = require "bitrix24.errors"

local M = {}

local OPTS = { event_type = "string", auth_type = "number", auth_connector = "string", options = "table" }

local function check_app(client, name, level)
  local a = type(client) == "table" and rawget(client, "_auth")
  if not a or a.kind ~= "oauth" then
    errors.raise(level, "%s: Bitrix24's event methods take application (OAuth) auth only, and this is "
      .. "not an OAuth client (outgoing webhooks are set up in Bitrix24's UI)", name)
  end
end

local function params(name, event, handler, opts, level)
  if type(event) ~= "string" or not event:match("^[%w_]+$") then
    errors.raise(level, "%s: event must be an event name such as \"ONCRMLEADUPDATE\"", name)
  end
  if opts ~= nil and type(opts) ~= "table" then errors.raise(level, "%s: opts must be a table", name) end
  opts = opts or {}
  for k, v in pairs(opts) do
    if not OPTS[k] then errors.raise(level, "%s: unknown opts.%s", name, tostring(k)) end
    if type(v) ~= OPTS[k] then errors.raise(level, "%s: opts.%s must be a %s", name, k, OPTS[k]) end
  end
  local offline = opts.event_type == "offline"
  if opts.event_type ~= nil and not offline and opts.event_type ~= "online" then
    errors.raise(level, '%s: opts.event_type must be "online" or "offline"', name)
  end
  if offline and handler ~= nil then
    errors.raise(level, "%s: an offline binding has no handler URL (pass nil)", name)
  end
  if not offline and (type(handler) ~= "string" or not handler:match("^https?://")) then
    errors.raise(level, "%s: handler must be the http(s) URL Bitrix24 POSTs the event to", name)
  end
  local p = { event = event:upper(), handler = handler, event_type = opts.event_type,
    auth_type = opts.auth_type, auth_connector = opts.auth_connector, options = opts.options }
  return p
end

-- level: the frame to blame, counted from these functions (1: their caller).
function M.bind(client, event, handler, opts, level)
  check_app(client, "bind", level + 1)
  local p = params("bind", event, handler, opts, level + 1)
  return client:call("event.bind", p)
end

function M.unbind(client, event, handler, opts, level)
  check_app(client, "unbind", level + 1)
  local p = params("unbind", event, handler, opts, level + 1)
  return client:call("event.unbind", p)
end

function M.list(client, level)
  check_app(client, "event_bindings", level + 1)
  return client:call("event.get")
end

M.check_app = check_app

return M
