-- Request handlers for spec/nginx_spec.lua, run inside the nginx it starts
-- (content_by_lua_file): /t/* use the client the way an application
-- would, /s/* are small HTTP servers with the framing quirks the
-- transport must handle. Each answers JSON for the spec to check.

local cjson = require "cjson"
local bitrix24 = require "bitrix24"

local function read_config()
  local f = assert(io.open(ngx.config.prefix() .. "spec-config.json", "rb"))
  local s = f:read("*a")
  f:close()
  return cjson.decode(s)
end

local config = read_config()
local args = ngx.req.get_uri_args()

local function reply(t, status)
  ngx.status = status or 200
  ngx.header.content_type = "application/json"
  ngx.say(cjson.encode(t))
  return ngx.exit(ngx.OK)
end

-- A call's outcome as JSON: the rows, or the error's code and status.
local function outcome(rows, err)
  if rows ~= nil then return { ok = true, rows = rows } end
  return { ok = false, code = err.code, status = err.status, description = err.description }
end

local function client_opts(extra)
  local o = { rate = 1000, burst = 100000, tries = 1 }
  if args.transport and args.transport ~= "" then o.transport = args.transport end
  if args.timeout then o.timeout = tonumber(args.timeout) end
  if args.max_response then o.max_response = tonumber(args.max_response) end
  if args.tls_verify == "0" then o.tls_verify = false end
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

local T = {}   -- /t/NAME
local S = {}   -- /s/NAME

-- One call: url (default: the webhook of the fake portal), method, id.
function T.call()
  local client = bitrix24.webhook(args.url or config.webhook_url, client_opts())
  local rows, err = client:call(args.method or "crm.lead.contact.items.get", { id = tonumber(args.id or 1) })
  return reply(outcome(rows, err))
end

-- n sequential calls through one client, for keep-alive.
function T.seq()
  local client = bitrix24.webhook(config.webhook_url, client_opts())
  for _ = 1, tonumber(args.n or 5) do
    local rows, err = client:call("crm.lead.contact.fields")
    if not rows then return reply(outcome(rows, err)) end
  end
  return reply({ ok = true })
end

-- A client with the default budget (the shared dict) and the portal's
-- own small limits.
function T.paced()
  local client = bitrix24.webhook(config.webhook_url, {
    rate = tonumber(args.rate), burst = tonumber(args.burst), tries = 1, transport = args.transport,
    rate_limit = args.nolimit ~= "1",
  })
  return reply(outcome(client:call("crm.lead.contact.fields")))
end

function T.budget_keys()
  return reply({ keys = ngx.shared.bitrix24:get_keys(0) })
end

-- The budget's lock held by "another worker" (a key we plant): update
-- waits until it is released, without blocking this worker.
function T.lock()
  local dict = ngx.shared.spec
  local budget = bitrix24.shared_dict_budget("spec")
  local key = "lock-test"
  assert(dict:add("bitrix24:lock:" .. key, true, 5))
  local released_at
  ngx.timer.at(0.1, function()
    ngx.update_time()
    released_at = ngx.now()
    dict:delete("bitrix24:lock:" .. key)
  end)
  ngx.update_time()
  local started = ngx.now()
  local result, err = budget:update(key, function(state)
    return { n = (state.n or 0) + 1 }, "done"
  end)
  ngx.update_time()
  local again = budget:update(key, function(state) return state, state.n end)
  return reply({
    result = result, err = err, waited = ngx.now() - started,
    after_release = released_at ~= nil and ngx.now() >= released_at, n = again,
  })
end

-- An OAuth client whose token the portal has expired: the refresh goes
-- through the transport's request() (a GET to the token endpoint).
function T.oauth()
  local o = config.oauth
  local refreshed = false
  local client = bitrix24.oauth({
    endpoint = o.endpoint, access_token = o.access_token, refresh_token = o.refresh_token,
    client_id = o.client_id, client_secret = o.client_secret, token_url = o.token_url,
    on_refresh = function() refreshed = true end,
  }, client_opts())
  local result = outcome(client:call("crm.lead.contact.items.get", { id = 1 }))
  result.refreshed = refreshed
  return reply(result)
end

-- An OAuth client per request, sharing its tokens through the bitrix24
-- shared dict: concurrent requests meeting an expired token must refresh
-- it once between them. The tokens to seed an empty store come in the
-- query (a test portal's).
function T.oauth_shared()
  local o = config.oauth
  local client = bitrix24.oauth({
    endpoint = o.endpoint, token_url = o.token_url, client_id = o.client_id, client_secret = o.client_secret,
    access_token = args.access_token, refresh_token = args.refresh_token,
    store = bitrix24.shared_dict_store("bitrix24", args.store),
  }, client_opts())
  return reply(outcome(client:call("crm.lead.contact.items.get", { id = 1 })))
end

-- One handler fanning out n calls (items.get of leads 1..n) with
-- `parallel` in flight. stop=close|raise: the progress callback closes the
-- client or raises after the second answer; stop=on_request: the
-- on_request hook closes it before the first send. oauth=1: an OAuth client
-- whose token the portal has expired (one refresh for all).
function T.fanout()
  local n, parallel = tonumber(args.n or 50), tonumber(args.parallel or 10)
  local client
  if args.oauth == "1" then
    local o = config.oauth
    client = bitrix24.oauth({
      endpoint = o.endpoint, access_token = args.access_token, refresh_token = args.refresh_token,
      client_id = o.client_id, client_secret = o.client_secret, token_url = o.token_url,
    }, client_opts())
  else
    local extra = args.stop == "on_request" and { on_request = function() client:close() end } or nil
    client = bitrix24.webhook(config.webhook_url, client_opts(extra))
  end
  local list = {}
  for i = 1, n do list[i] = { "crm.lead.contact.items.get", { id = i } } end
  local progress
  if args.stop == "close" then
    progress = function(done) if done == 2 then client:close() end end
  elseif args.stop == "raise" then
    progress = function(done) if done == 2 then error("stop here") end end
  end
  ngx.update_time()
  local started = ngx.now()
  local ok, results, errs = pcall(client.calls, client, list, { parallel = parallel, progress = progress })
  ngx.update_time()
  local out = { elapsed = ngx.now() - started, results = {}, codes = {} }
  if not ok then
    out.raised = tostring(results)
    return reply(out)
  end
  for i = 1, n do
    out.results[i] = results[i] or cjson.null
    out.codes[i] = errs[i] and errs[i].code or cjson.null
  end
  return reply(out)
end

-- crm.lead.list through client:each with opts.parallel, beside the same
-- export one request at a time: both id lists. stop=N leaves the parallel
-- export after N rows (its requests in flight are let go), then a call
-- shows the client still works.
function T.each()
  local client = bitrix24.webhook(config.webhook_url, client_opts())
  local opts = { fast = args.fast == "1", page_batch = tonumber(args.page_batch or 50) }
  local function export(parallel, stop)
    local ids = {}
    opts.parallel = parallel
    for row, err in client:each("crm.lead.list", { select = { "ID" } }, opts) do
      if not row then error(tostring(err.code)) end
      ids[#ids + 1] = tonumber(row.ID)
      if stop and #ids == stop then break end
    end
    return ids
  end
  local out = { one = export(1), together = export(tonumber(args.parallel or 4), tonumber(args.stop)) }
  if args.stop then out.after = outcome(client:call("crm.lead.contact.fields")).ok end
  return reply(out)
end

function T.hits()
  local dict, out = ngx.shared.spec, {}
  for _, k in ipairs(dict:get_keys(0)) do
    local name = k:match("^hits:(.*)$")
    if name then out[name] = dict:get(k) end
  end
  return reply(out)
end

function T.ca_file()
  local ok, err = pcall(bitrix24.webhook, config.webhook_url, { ca_file = "/nonexistent.pem" })
  local ok2, err2 = pcall(bitrix24.webhook, config.webhook_url, { proxy = "http://127.0.0.1:1" })
  return reply({ ok = ok, err = tostring(err), proxy_ok = ok2, proxy_err = tostring(err2) })
end

-- The transport alone against the /s/ servers: several calls on one
-- transport, each reported as { status = ..., result = ... } or an error.
function T.transport()
  local t = require("bitrix24.transport.nginx").new(client_opts())
  local out = {}
  for i, path in ipairs(args.path and (type(args.path) == "table" and args.path or { args.path }) or {}) do
    -- base=N: the stub's Nth port, whose connection pool no other test uses.
    local url = config.stub_urls[tonumber(args.base or 1)] .. path
    if args.raw then
      local status, b = t:request(url, args.get and nil or "{}")
      out[i] = status and { status = status, body = b } or { code = b.code, description = b.description }
    else
      local env, b = t:call(url, "{}")
      out[i] = env and { status = b, result = env.result }
        or { code = b.code, description = b.description, status = b.status, extra = b.envelope or b.location }
    end
  end
  t:close()
  local ok, err = pcall(t.call, t, config.stub_urls[1] .. "/s/length", "{}")
  return reply({ calls = out, after_close = ok and "no error" or tostring(err) })
end

---------------------------------------------------------------- the stubs

local function count(name)
  return ngx.shared.spec:incr("hits:" .. name, 1, 0)
end

function S.length()
  count("length")
  local body = cjson.encode({ result = { conn = tonumber(ngx.var.connection) } })
  ngx.header.content_length = #body
  ngx.header.content_type = "application/json"
  ngx.print(body)
end

-- Served where `keepalive_timeout 0` makes nginx answer "Connection: close".
S.close = S.length

-- No Content-Length and flushed in pieces: nginx sends it chunked.
function S.chunked()
  ngx.header.content_type = "application/json"
  local pad = string.rep("x", tonumber(args.size or 1000))
  ngx.print('{"result":{"conn":', ngx.var.connection, ',"pad":"')
  ngx.flush(true)
  for i = 1, #pad, 300 do
    ngx.print(pad:sub(i, i + 299))
    ngx.flush(true)
  end
  ngx.print('"}}')
end

-- The second request on a connection is dropped without a byte: what a
-- server closing an idle keep-alive connection looks like to the client.
function S.flaky()
  count("flaky")
  if tonumber(ngx.var.connection_requests) > 1 then return ngx.exit(444) end
  return S.length()
end

-- Every request dropped without an answer.
function S.drop()
  count("drop")
  return ngx.exit(444)
end

-- A body that ends when the connection does (no length, no chunks).
function S.eof()
  ngx.req.read_body()
  local sock = assert(ngx.req.socket(true))
  local body = cjson.encode({ result = { eof = true } })
  assert(sock:send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" .. body))
  return ngx.exit(444)
end

function S.redirect()
  ngx.header.location = args.to or "/elsewhere/"
  return ngx.exit(302)
end

function S.slow()
  ngx.sleep(tonumber(args.delay or 1))
  return S.length()
end

function S.error()
  ngx.status = 400
  return S.text('{"error":"ERROR_ARGUMENT","error_description":"bad"}')
end

function S.text(body)
  ngx.header.content_length = #body
  ngx.header.content_type = "application/json"
  ngx.print(body)
end

local kind, name = ngx.var.uri:match("^/([ts])/([%w_]+)")
local handler = kind == "t" and T[name] or kind == "s" and S[name]
if not handler then return reply({ error = "no handler for " .. ngx.var.uri }, 404) end
return handler()
