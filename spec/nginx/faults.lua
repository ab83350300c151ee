-- Request handlers for spec/shared_dict_spec.lua, inside the nginx it
-- starts: corrupt content in the lua_shared_dict budget and token store.
-- Each answers JSON for the spec to check.

local cjson = require "cjson"
local bitrix24 = require "bitrix24"

local args = ngx.req.get_uri_args()
local dict = ngx.shared.bitrix24

local function outcome(ok, rows, err)
  if not ok then return { raised = tostring(rows) } end
  if rows ~= nil then return { ok = true } end
  return { ok = false, code = err.code, kind = err.kind, description = err.description }
end

local function reply(t)
  ngx.header.content_type = "application/json"
  ngx.say(cjson.encode(t))
end

local H = {}

-- The budget entry set to args.raw (a string) or the number 5, then two calls.
function H.budget()
  local webhook_url = args.webhook
  local origin = webhook_url:match("^(https?://[^/]+)")
  local key = "bitrix24:budget:" .. origin
  dict:set(key, args.raw or 5)
  local client = bitrix24.webhook(webhook_url, { rate = 1000, burst = 100000, tries = 1 })
  local first = outcome(pcall(client.call, client, "crm.lead.contact.fields"))
  local lock_free = dict:get("bitrix24:lock:" .. origin) == nil
  local second = outcome(pcall(client.call, client, "crm.lead.contact.fields"))
  reply { first = first, lock_free = lock_free, second = second }
end

-- The token set set to args.raw, then a call on an expired token; then the
-- entry removed and the call again.
function H.store()
  local name = "bitrix24:tokens:spec"
  dict:set(name, args.raw or 5)
  local client = bitrix24.oauth({ endpoint = args.endpoint, token_url = args.token_url,
    access_token = args.access_token, refresh_token = args.refresh_token,
    client_id = args.client_id, client_secret = args.client_secret,
    store = bitrix24.shared_dict_store("bitrix24", "spec") }, { rate = 1000, burst = 100000, tries = 1 })
  local first = outcome(pcall(client.call, client, "crm.lead.contact.fields"))
  local lock_free = dict:get(name .. ":lock") == nil
  local left = dict:get(name) == (args.raw or 5)
  dict:delete(name)
  local second = outcome(pcall(client.call, client, "crm.lead.contact.fields"))
  local saved = cjson.decode(dict:get(name) or "null")
  reply { first = first, lock_free = lock_free, left_alone = left, second = second,
    saved_refresh = type(saved) == "table" and saved.refresh_token or nil }
end

H[ngx.var.uri:match("^/t/(%w+)$")]()
