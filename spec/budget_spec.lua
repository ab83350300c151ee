-- The rate-limit budget under faults: processes that give up before
-- their turn, a poisoned level, corrupt or hostile budget files. Give-ups
-- must not leave reservations behind, a level must stay under its
-- ceiling, and a bad file must end in BUDGET_ERROR (returned, never
-- raised) with its lock given back and the file repaired.

local support = require "support"
local bitrix24 = require "bitrix24"
local core = require "bitrix24.core"
local cjson = require "cjson"

local ITEMS_GET = "crm.lead.contact.items.get"

describe("budget under faults", function()
  local portal, dir

  -- The portal itself never refuses: every refusal seen is the client's own.
  support.use_portal(nil, function(p) portal = p end)
  setup(function() dir = support.tmpdir() end)
  teardown(function() support.remove_dir(dir) end)

  local function key() return (portal.webhook_url:match("^(https?://[^/]+)")) end

  local function write(path, s)
    local f = assert(io.open(path, "wb"))
    f:write(s)
    f:close()
  end

  local function level(path)
    local all = cjson.decode(support.read_file(path))
    return all[key()].level
  end

  it("returns the reservations of calls that give up, so a shared budget is not poisoned", function()
    local path = dir .. "/shared.json"
    os.remove(path)
    local script = dir .. "/hasty.lua"
    write(script, ([[
      package.path = %q .. "/lua/?.lua;" .. package.path
      package.cpath = %q .. "/build/%s/?.so;" .. package.cpath
      local bitrix24 = require "bitrix24"
      local core = require "bitrix24.core"
      local client = bitrix24.webhook(%q, { rate = 2, burst = 10, deadline = 1, tries = 1,
        budget = bitrix24.file_budget(%q) })
      local ok, gave_up, other = 0, 0, ""
      local stop = core.monotonic() + 1.5
      while core.monotonic() < stop do
        local rows, err = client:call("crm.lead.contact.items.get", { id = 1 })
        if rows then ok = ok + 1
        elseif err.code == "RATE_LIMIT_WAIT" and err.kind == "client" and err.status == nil then
          gave_up = gave_up + 1
        elseif other == "" then other = tostring(err) end   -- the first is enough to show
      end
      print(ok .. " " .. gave_up .. " " .. other)
    ]]):format(support.ROOT, support.ROOT, support.LUA_VERSION, portal.webhook_url, path))
    local out = support.run("(" .. support.LUA .. " " .. script .. " & " .. support.LUA .. " " .. script
      .. " & " .. support.LUA .. " " .. script .. " & wait)")
    local sent, gave_up = 0, 0
    for ok, gu, other in out:gmatch("(%d+) (%d+) ([^\n]*)\n") do
      assert.equal("", other)
      sent, gave_up = sent + tonumber(ok), gave_up + tonumber(gu)
    end
    assert.is_true(gave_up > 0, out)
    -- Every call that was not given up reached the portal, and it refused none.
    assert.equal(sent, #portal:requests())
    -- The level holds the requests really sent (and drains), not the give-ups:
    -- at most the ceiling of 9 + 2/s * 1 s of deadline.
    assert.is_true(level(path) <= 11, "level " .. level(path))
    -- A patient process sharing the file gets its turn within a few seconds.
    local patient = bitrix24.webhook(portal.webhook_url, { rate = 2, burst = 10, deadline = 20, tries = 1,
      budget = bitrix24.file_budget(path) })
    local rows, err = patient:call(ITEMS_GET, { id = 1 })
    patient:close()
    assert.is_nil(err)
    assert.equal(2, #rows)
  end)

  it("clamps a level above the ceiling (left by an older version) on read and on write", function()
    local path = dir .. "/poisoned.json"
    write(path, cjson.encode { [key()] = { level = 9121.99, last = core.now() } })
    local client = bitrix24.webhook(portal.webhook_url, { rate = 2, burst = 10, deadline = 3, tries = 1,
      budget = bitrix24.file_budget(path) })
    local rows, err = client:call(ITEMS_GET, { id = 1 })
    -- Clamped to the ceiling (9 + 2/s * 3 s), one more would wait past the
    -- deadline: the client's own give-up, nothing sent, and not the portal's 503.
    assert.is_nil(rows)
    assert.equal("RATE_LIMIT_WAIT", err.code)
    assert.equal("client", err.kind)
    assert.is_nil(err.status)
    assert.equal(0, #portal:requests())
    assert.is_true(level(path) <= 15, "level " .. level(path))
    -- It drains like any other level: the next call goes through.
    core.sleep(1)
    rows, err = client:call(ITEMS_GET, { id = 1 })
    client:close()
    assert.is_nil(err)
    assert.equal(2, #rows)
    assert.is_true(level(path) <= 15, "level " .. level(path))
  end)

  -- Corrupt or hostile content: what the first call must return (nil:
  -- success), after which the file is JSON again and the next call works.
  local function cases(k)
    return {
      { "an infinite level under another key", '{"other":{"level":1e999}}', "BUDGET_ERROR" },
      { "an infinite level under its own key", '{"' .. k .. '":{"level":1e999,"last":1}}', "BUDGET_ERROR" },
      { "not JSON", '{"level": 3', "BUDGET_ERROR" },
      { "a JSON array", "[1, 2, 3]", "BUDGET_ERROR" },
      { "a string for the state", '{"' .. k .. '":"full"}', "BUDGET_ERROR" },
      { "a string for the level", '{"' .. k .. '":{"level":"abc","last":"x"}}', nil },
      { "a negative level", '{"' .. k .. '":{"level":-1e300,"last":1e300}}', nil },
      { "an empty file", "", "BUDGET_ERROR" },
    }
  end

  it("turns every corrupt budget file into BUDGET_ERROR or a repaired state, never a raise", function()
    for i, case in ipairs(cases(key())) do
      local path = dir .. "/corrupt" .. i .. ".json"
      write(path, case[2])
      local client = bitrix24.webhook(portal.webhook_url, { rate = 100, burst = 10, tries = 1,
        budget = bitrix24.file_budget(path) })
      local ok, rows, err = pcall(client.call, client, ITEMS_GET, { id = 1 })
      assert.is_true(ok, case[1] .. ": raised " .. tostring(rows))
      if case[3] then
        assert.is_nil(rows, case[1])
        assert.equal(case[3], err.code, case[1])
        assert.equal("client", err.kind, case[1])
        assert.matches("repaired", err.description, 1, true)
      else
        assert.is_nil(err, case[1])
      end
      -- The lock was given back: taken again at once.
      local lock = core.lock(path .. ".lock", 0)
      assert.is_truthy(lock, case[1] .. ": the lock is still held")
      lock:unlock()
      -- The file is a budget again, and the next call works.
      assert.is_table(cjson.decode(support.read_file(path)), case[1])
      rows, err = client:call(ITEMS_GET, { id = 1 })
      client:close()
      assert.is_nil(err, case[1])
      assert.equal(2, #rows, case[1])
    end
  end)

  it("turns a budget that raises, or fails, into BUDGET_ERROR", function()
    for _, budget in ipairs {
      { update = function() error("redis went away") end },
      { update = function() return nil, "redis went away" end },
    } do
      local client = bitrix24.webhook(portal.webhook_url, { tries = 1, budget = budget })
      local ok, rows, err = pcall(client.call, client, ITEMS_GET, { id = 1 })
      client:close()
      assert.is_true(ok, tostring(rows))
      assert.is_nil(rows)
      assert.equal("BUDGET_ERROR", err.code)
      assert.matches("redis went away", err.description, 1, true)
    end
    assert.equal(0, #portal:requests())
  end)

  it("removes temp files a writer killed mid-write left beside the budget file", function()
    local path = dir .. "/killed.json"
    local dead = support.run("sh -c 'echo $$'"):match("%d+")
    write(path .. ".tmp." .. dead, "half a write")
    local client = bitrix24.webhook(portal.webhook_url, { rate = 1000, burst = 100000, tries = 1,
      budget = bitrix24.file_budget(path) })
    assert(client:call(ITEMS_GET, { id = 1 }))
    client:close()
    assert.equal("", (support.run("(ls -A '" .. dir .. "' | grep -F 'killed.json.tmp.' || true)")))
    assert.equal("600", (support.run("stat -c %a '" .. path .. "'"):gsub("%s+$", "")))
  end)
end)
