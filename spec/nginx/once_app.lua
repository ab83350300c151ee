-- The client side of spec/send_once_spec.lua inside the nginx that spec
-- starts (content_by_lua_file), against spec/once_server.lua at ?base=.
-- ?scenario=write: a read, a write, a read again on one webhook client;
-- ?scenario=refresh: one read by an OAuth client whose token expired
-- (three tries).
-- Answers the outcome of each call as JSON.

local cjson = require "cjson"
local bitrix24 = require "bitrix24"

local args = ngx.req.get_uri_args()
local opts = { transport = "nginx", tries = 1, retry_writes = false, rate_limit = false, timeout = 5 }

local function outcome(result, err)
  return { ok = result ~= nil, code = err and err.code or cjson.null,
    description = err and err.description or cjson.null }
end

local out = {}
if args.scenario == "write" then
  local client = bitrix24.webhook(args.base .. "/rest/1/secretcode1234/", opts)
  out[1] = outcome(client:call("crm.lead.contact.items.get", { id = 1 }))
  out[2] = outcome(client:call("crm.lead.contact.add", { id = 1, fields = { CONTACT_ID = 5 } }))
  out[3] = outcome(client:call("crm.lead.contact.items.get", { id = 1 }))
  client:close()
elseif args.scenario == "refresh" then
  opts.tries = 3   -- a retry of the call or of the refresh would show too
  local client = bitrix24.oauth({ endpoint = args.base .. "/expired/rest/", token_url = args.base .. "/oauth/token/",
    access_token = "oldaccess1234", refresh_token = "oldrefresh1234",
    client_id = "app.1234", client_secret = "appsecret1234" }, opts)
  out[1] = outcome(client:call("crm.lead.contact.items.get", { id = 1 }))
  client:close()
else
  ngx.status = 400
end
ngx.header.content_type = "application/json"
ngx.say(cjson.encode(out))
