-- POSTs the events the fake portal fired (portal.event_outbox, see
-- bitrix24.fake.events) to their handlers, inside nginx: each from its
-- own ngx.timer with a cosocket, so the portal's one worker keeps serving
-- while a handler is slow. Each answer's status (or the failure) is
-- reported back with events.delivered. Like Bitrix24, a failed POST is
-- never sent again (FACTS §12.1).

local events = require "bitrix24.fake.events"

local M = {}

local TIMEOUT_MS = 10000

local function post(premature, portal, item)
  if premature then return end
  local scheme, host, port, path = item.url:match("^(https?)://([^:/?#]+):?(%d*)([^#]*)$")
  if not scheme then return events.delivered(portal, item, nil, "bad handler URL") end
  if path == "" then path = "/" end
  port = tonumber(port) or (scheme == "https" and 443 or 80)
  local sock = ngx.socket.tcp()
  sock:settimeout(TIMEOUT_MS)
  local ok, err = sock:connect(host, port)
  if ok and scheme == "https" then ok, err = sock:sslhandshake(nil, host, false) end
  if ok then
    ok, err = sock:send(table.concat({
      "POST " .. path .. " HTTP/1.1", "Host: " .. host .. ":" .. port,
      "Content-Type: application/x-www-form-urlencoded", "Content-Length: " .. #item.body,
      "User-Agent: Bitrix24 Webhook Engine (fake)", "Connection: close", "", item.body }, "\r\n"))
  end
  local line
  if ok then line, err = sock:receive("*l") end
  sock:close()
  local status = line and tonumber(line:match("^HTTP/%d%.%d (%d%d%d)"))
  events.delivered(portal, item, status, not status and tostring(err or "no status line") or nil)
end

function M.drain(portal)
  local box = portal.event_outbox
  if not box or #box == 0 then return end
  portal.event_outbox = {}
  for _, item in ipairs(box) do
    local ok, err = ngx.timer.at(0, post, portal, item)
    if not ok then events.delivered(portal, item, nil, "no timer: " .. tostring(err)) end
  end
end

return M
