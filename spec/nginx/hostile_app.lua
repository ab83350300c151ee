-- The client side of spec/hostile_server_spec.lua inside the nginx that
-- spec starts (content_by_lua_file): one call to the hostile server with
-- the options in the query, answered as JSON with the outcome, the time it
-- took and this worker's pid (to check it is the same process afterwards).

local cjson = require "cjson"
local bitrix24 = require "bitrix24"

local args = ngx.req.get_uri_args()
local opts = { transport = "nginx", tries = 1, rate_limit = false }
for _, k in ipairs { "timeout", "deadline", "max_response" } do
  if args[k] then opts[k] = tonumber(args[k]) end
end

local client = bitrix24.webhook(args.url, opts)
ngx.update_time()
local started = ngx.now()
local result, err = client:call("crm.lead.contact.fields")
ngx.update_time()
ngx.header.content_type = "application/json"
ngx.say(cjson.encode {
  ok = result ~= nil,
  code = err and err.code,
  description = err and err.description,
  elapsed = ngx.now() - started,
  pid = ngx.worker.pid(),
})
