-- Nothing the server may have run is sent twice by our choice: a write,
-- and the token request (a refresh sent again would present a refresh
-- token the first one may already have rotated, and the new tokens would
-- be lost). Both transports reuse keep-alive connections, and both send a
-- request again on a fresh connection when a reused one dies before any
-- byte of the answer (libcurl on its own, the nginx transport as libcurl
-- does): only a read may take that path. spec/once_server.lua answers the
-- first request of each connection only and drops writes and token
-- requests after reading them whole (spec/write_once_spec.lua has the
-- libcurl write).

local support = require "support"
local nginx = require "nginx_harness"
local bitrix24 = require "bitrix24"
local cjson = require "cjson"
local child = require "child_server"

local OLD_REFRESH = "oldrefresh1234"

-- A once_server of its own for each test, so its log is that test's.
local function start_server() return child.start("once_server.lua", 30) end
local stop_server = child.stop

-- How many request lines the server read that contain text.
local function seen(s, text)
  local n = 0
  for line in child.log(s):gmatch("[^\n]+") do
    if line:find(text, 1, true) then n = n + 1 end
  end
  return n
end

local function oauth_config(base)
  return { endpoint = base .. "/expired/rest/", token_url = base .. "/oauth/token/",
    access_token = "oldaccess1234", refresh_token = OLD_REFRESH,
    client_id = "app.1234", client_secret = "appsecret1234" }
end

local function check_refresh_failure(s, ok, code, description)
  assert.is_false(ok, "the call succeeded")
  assert.equal("NETWORK_ERROR", code)
  assert.matches("token refresh", description, 1, true)
  assert.is_nil(description:find(OLD_REFRESH, 1, true), "the refresh token leaked: " .. description)
  assert.is_nil(description:find("appsecret1234", 1, true), "the client secret leaked: " .. description)
  -- The expired call went first, on the connection the refresh must not reuse.
  assert.equal(1, seen(s, "/expired/rest/crm.lead.contact.items.get"))
  assert.equal(1, seen(s, "refresh_token=" .. OLD_REFRESH),
    "the server saw the old refresh token " .. seen(s, "refresh_token=" .. OLD_REFRESH) .. " times")
end

describe("a token request on a kept-alive connection the token endpoint drops", function()
  local s
  before_each(function() s = start_server() end)
  after_each(function() stop_server(s) end)

  it("is sent once, and the call fails with the refresh's network error", function()
    -- Three tries: a retry of the call or of the refresh would show too.
    local client = bitrix24.oauth(oauth_config(s.base), support.opts { tries = 3, timeout = 5 })
    local result, err = client:call("crm.lead.contact.items.get", { id = 1 })
    client:close()
    check_refresh_failure(s, result ~= nil, err and err.code, err and err.description)
  end)
end)

describe("send once, nginx transport #nginx", function()
  if not nginx.runs_here() then
    pending(nginx.PENDING)
    return
  end
  local s, ngx_server

  setup(function() ngx_server = nginx.start { ["/once"] = "spec/nginx/once_app.lua" } end)
  teardown(function() if ngx_server then ngx_server:stop() end end)
  before_each(function() s = start_server() end)
  after_each(function() stop_server(s) end)

  local function run(scenario)
    local body = ngx_server:get("/once?scenario=" .. scenario .. "&base=" .. nginx.urlencode(s.base), 20)
    local ok, t = pcall(cjson.decode, body)
    assert(ok and type(t) == "table", "not an outcome: " .. body)
    return t
  end

  it("sends a write on a dropped connection once (NETWORK_ERROR), and a read again", function()
    local t = run "write"
    assert.is_true(t[1].ok, "the first read failed: " .. tostring(t[1].description))
    -- The write: on the pooled connection the server would drop it and a
    -- resend would show; on a fresh one it is dropped once.
    assert.is_false(t[2].ok, "the write succeeded")
    assert.equal("NETWORK_ERROR", t[2].code)
    assert.equal(1, seen(s, "crm.lead.contact.add"), "the server saw the write "
      .. seen(s, "crm.lead.contact.add") .. " times")
    -- The second read: the pooled connection of the first is dropped, the
    -- resend on a fresh one is answered.
    assert.is_true(t[3].ok, "the second read failed: " .. tostring(t[3].description))
    assert.equal(3, seen(s, "crm.lead.contact.items.get"), "the reads were not seen 1 + 2 times")
  end)

  it("sends a token request on a kept-alive connection the token endpoint drops once", function()
    local t = run "refresh"
    check_refresh_failure(s, t[1].ok, t[1].code, t[1].description)
  end)
end)
