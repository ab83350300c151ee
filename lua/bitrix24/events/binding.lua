-- client:bind / client:unbind / client:event_bindings (FACTS §12.3):
-- event.bind, event.unbind and event.get. Bitrix24 accepts them with
-- application (OAuth) auth only, so a webhook client is refused before
-- anything is sent: a programmer error, like any other misuse. The checks
-- return nil and why (see bitrix24.errors); the public functions raise.

local errors = require "bitrix24.errors"

local fail = errors.message

local M = {}

local OPTS = { event_type = "string", auth_type = "number", auth_connector = "string", options = "table" }

-- true | nil, why
function M.check_app(client, name)
  local a = type(client) == "table" and rawget(client, "_auth")
  if not a or a.kind ~= "oauth" then
    return nil, fail("%s: Bitrix24's event methods take application (OAuth) auth only, and this is "
      .. "not an OAuth client (outgoing webhooks are set up in Bitrix24's UI)", name)
  end
  return true
end

-- The params of event.bind / event.unbind | nil, why.
function M.params(client, name, event, handler, opts)
  local ok, why = M.check_app(client, name)
  if not ok then return nil, why end
  if type(event) ~= "string" or not event:match("^[%w_]+$") then
    return nil, fail("%s: event must be an event name such as \"ONCRMLEADUPDATE\"", name)
  end
  if opts ~= nil and type(opts) ~= "table" then return nil, fail("%s: opts must be a table", name) end
  opts = opts or {}
  for k, v in pairs(opts) do
    if not OPTS[k] then return nil, fail("%s: unknown opts.%s", name, k) end
    if type(v) ~= OPTS[k] then return nil, fail("%s: opts.%s must be a %s", name, k, OPTS[k]) end
  end
  local offline = opts.event_type == "offline"
  if opts.event_type ~= nil and not offline and opts.event_type ~= "online" then
    return nil, fail('%s: opts.event_type must be "online" or "offline"', name)
  end
  if offline and handler ~= nil then
    return nil, fail("%s: an offline binding has no handler URL (pass nil)", name)
  end
  if not offline and (type(handler) ~= "string" or not handler:match("^https?://")) then
    return nil, fail("%s: handler must be the http(s) URL Bitrix24 POSTs the event to", name)
  end
  return { event = event:upper(), handler = handler, event_type = opts.event_type,
    auth_type = opts.auth_type, auth_connector = opts.auth_connector, options = opts.options }
end

return M
