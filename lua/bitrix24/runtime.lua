-- Where the code runs, decided once when it is loaded: inside nginx
-- (ngx_lua: cosockets, ngx.sleep, shared dicts) or in plain Lua (libcurl,
-- a real sleep, process memory). Everything that differs between the two
-- is supplied from here, so no other module asks "are we inside nginx?".

local core = require "bitrix24.core"

local ngx = rawget(_G, "ngx")

local M = {}

-- ngx_lua defines ngx.socket and ngx.get_phase; a table called ngx that a
-- plain Lua program made for itself does not have both.
M.nginx = type(ngx) == "table" and type(ngx.socket) == "table" and type(ngx.get_phase) == "function"
  and type(ngx.sleep) == "function"

if M.nginx then
  M.ngx = ngx
  -- ngx.sleep lets the worker serve others meanwhile; ngx.now is cached
  -- per event-loop turn, hence the update.
  M.sleep = ngx.sleep
  M.now = function() ngx.update_time(); return ngx.now() end
else
  M.sleep = core.sleep
  M.now = core.now
end

-- opts.transport: "curl", "nginx", or an object with the same methods as
-- core.http's handle (call, request, close); nil picks by the runtime.
-- Inside nginx a blocking libcurl call would stall every request the
-- worker serves, so the default there is nginx's cosockets.
function M.transport(kind, http_opts)
  if kind == nil then kind = M.nginx and "nginx" or "curl" end
  if kind == "curl" then return core.http(http_opts) end
  if kind == "nginx" then return require("bitrix24.transport.nginx").new(http_opts) end
  return kind
end

-- The shared dict `name` of nginx, or nil (elsewhere, or not configured).
function M.shared_dict(name)
  if not M.nginx or type(ngx.shared) ~= "table" then return nil end
  return ngx.shared[name]
end

return M
