-- The nginx shared-dict budget and token store holding corrupt or hostile
-- content, inside a real nginx (its own LuaJIT, so under Lua 5.4's run
-- only, like spec/nginx_spec.lua): a BUDGET_ERROR or STORE_ERROR returned,
-- never a raise, the dict's lock always given back.

local support = require "support"
local nginx = require "nginx_harness"
local cjson = require "cjson"

describe("shared-dict budget and token store under corrupt content #nginx", function()
  if not nginx.runs_here() then
    pending(nginx.PENDING)
    return
  end

  local portal, ngx_server

  support.use_portal({ reset = false }, function(p) portal = p end)
  setup(function() ngx_server = nginx.start { ["/t/"] = "spec/nginx/faults.lua" } end)
  teardown(function() if ngx_server then ngx_server:stop() end end)

  local function get(path, params)
    local q = {}
    for k, v in pairs(params) do q[#q + 1] = k .. "=" .. nginx.urlencode(v) end
    return cjson.decode(ngx_server:get(path .. "?" .. table.concat(q, "&")))
  end

  -- What the dict held, and whether the first call must fail (nil: succeed).
  local BUDGETS = {
    { "an infinite level", '{"level":1e999}', "BUDGET_ERROR" },
    { "not JSON", '{"level": 3', "BUDGET_ERROR" },
    { "a JSON array", "[1,2]", nil },
    { "a number instead of JSON text", nil, "BUDGET_ERROR" },
    { "a string for the level", '{"level":"abc","last":"x"}', nil },
  }
  for _, case in ipairs(BUDGETS) do
    it("budget holding " .. case[1] .. ": no raise, lock given back, the next call works", function()
      local r = get("/t/budget", { webhook = portal.webhook_url, raw = case[2] })
      assert.is_nil(r.first.raised, r.first.raised)
      if case[3] then
        assert.equal(case[3], r.first.code)
        assert.equal("client", r.first.kind)
      else
        assert.is_true(r.first.ok, r.first.description)
      end
      assert.is_true(r.lock_free)
      assert.is_true(r.second.ok, r.second.description or r.second.raised)
    end)
  end

  local STORES = {
    { "not JSON", '{"access_token": "abc' },
    { "a number for the access token", '{"access_token": 5}' },
    { "an infinite number", '{"access_token": 1e999}' },
    { "a number instead of JSON text", nil },
  }
  for _, case in ipairs(STORES) do
    it("token store holding " .. case[1] .. ": STORE_ERROR, left alone, lock given back", function()
      portal:reset { tokens = true }
      local info = portal:info()
      portal:expire_tokens()
      local r = get("/t/store", { raw = case[2], endpoint = portal.oauth_endpoint, token_url = portal.token_url,
        access_token = info.access_token, refresh_token = info.refresh_token, client_id = info.client_id,
        client_secret = info.client_secret })
      assert.is_nil(r.first.raised, r.first.raised)
      assert.equal("STORE_ERROR", r.first.code)
      assert.equal("client", r.first.kind)
      assert.is_true(r.lock_free)
      assert.is_true(r.left_alone)
      -- Once it is removed, the refresh goes through and is saved.
      assert.is_true(r.second.ok, r.second.description or r.second.raised)
      assert.equal(portal:info().refresh_token, r.saved_refresh)
    end)
  end
end)
