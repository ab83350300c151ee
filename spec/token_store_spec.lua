-- Token stores under faults: a save that fails, a store seeded by two
-- processes at once, corrupt or hostile content. The rotated refresh token
-- must survive each of them (losing it means a person re-authorizes the
-- application by hand).

local support = require "support"
local bitrix24 = require "bitrix24"

local ITEMS_GET = "crm.lead.contact.items.get"

describe("token stores under faults", function()
  local portal, dir

  support.use_portal({ reset = { tokens = true } }, function(p) portal = p end)
  setup(function() dir = support.tmpdir() end)
  teardown(function() support.remove_dir(dir) end)

  local function config(extra)
    return (support.oauth_config(portal, extra))
  end

  local function token_requests() return support.count_requests(portal, "oauth.token") end

  -- A store in memory whose save can be made to fail like a full disk.
  local function flaky_store()
    local store = { saves = 0 }
    function store.load() return store.data end
    function store.save(_, t)
      if store.broken then return nil, "disk full" end
      store.saves = store.saves + 1
      store.data = t
      return true
    end
    return store
  end

  it("gives on_refresh the new tokens when the store's save fails, and keeps them in memory", function()
    local store, seen = flaky_store(), {}
    local client = bitrix24.oauth(config { store = store, on_refresh = function(t) seen[#seen + 1] = t end },
      support.opts())
    local old_refresh = store.data.refresh_token
    store.broken = true
    portal:expire_tokens()
    local rows, err = client:call(ITEMS_GET, { id = 1 })
    assert.is_nil(rows)
    assert.equal("STORE_ERROR", err.code)
    assert.equal("client", err.kind)
    assert.matches("disk full", err.description, 1, true)
    -- on_refresh has the rotated refresh token: the one the portal now accepts.
    assert.equal(1, #seen)
    assert.equal(portal:info().refresh_token, seen[1].refresh_token)
    assert.not_equal(old_refresh, seen[1].refresh_token)
    -- The store still holds the old set (its save failed), the client the new one.
    assert.equal(old_refresh, store.data.refresh_token)
    assert(client:call(ITEMS_GET, { id = 1 }))
    -- The next expiry: the store's older set must not be reloaded over the
    -- newer tokens in memory (its refresh token is dead: invalid_grant).
    store.broken = false
    portal:expire_tokens()
    local rows2, err2 = client:call(ITEMS_GET, { id = 1 })
    assert.is_nil(err2)
    assert.equal(2, #rows2)
    client:close()
    assert.equal(2, token_requests())
    -- And the store holds the live set again: a new client from it alone works.
    assert.equal(portal:info().refresh_token, store.data.refresh_token)
    portal:expire_tokens()
    local fresh = bitrix24.oauth({ endpoint = portal.oauth_endpoint, token_url = portal.token_url,
      client_id = portal.client_id, client_secret = portal.client_secret, store = store }, support.opts())
    assert(fresh:call(ITEMS_GET, { id = 1 }))
    fresh:close()
  end)

  it("calls on_refresh even when the store's save raises, and returns STORE_ERROR", function()
    local store, seen = flaky_store(), 0
    local client = bitrix24.oauth(config { store = store, on_refresh = function() seen = seen + 1 end },
      support.opts())
    store.save = function() error("the store blew up") end
    portal:expire_tokens()
    local rows, err = client:call(ITEMS_GET, { id = 1 })
    client:close()
    assert.is_nil(rows)
    assert.equal("STORE_ERROR", err.code)
    assert.matches("blew up", err.description, 1, true)
    assert.equal(1, seen)
  end)

  it("seeds an empty store under the lock, never over tokens another process rotated meanwhile", function()
    local path = dir .. "/seed-race.json"
    os.remove(path)
    -- The other process: seeds the store, meets an expired token,
    -- refreshes (rotating the refresh token) and saves the new set.
    local script = dir .. "/seeder.lua"
    local f = assert(io.open(script, "w"))
    f:write(([[
      package.path = %q .. "/lua/?.lua;" .. package.path
      package.cpath = %q .. "/build/%s/?.so;" .. package.cpath
      local bitrix24 = require "bitrix24"
      local client = bitrix24.oauth { endpoint = %q, token_url = %q, client_id = %q, client_secret = %q,
        access_token = arg[1], refresh_token = arg[2], store = bitrix24.file_store(%q) }
      local rows, err = client:call("crm.lead.contact.items.get", { id = 1 })
      print(rows and "OK" or ("FAIL " .. tostring(err)))
    ]]):format(support.ROOT, support.ROOT, support.LUA_VERSION, portal.oauth_endpoint, portal.token_url,
      portal.client_id, portal.client_secret, path))
    f:close()
    local cfg = config()
    portal:expire_tokens()
    -- This process finds the store empty; right then (between its look and
    -- its seeding) the other process runs to completion.
    local file = bitrix24.file_store(path)
    local raced, child_out = false, nil
    local store = {
      load = function(s)
        local t, err = file.load(s)
        if not raced then
          raced = true
          child_out = support.run(support.LUA .. " " .. script .. " " .. cfg.access_token .. " "
            .. cfg.refresh_token)
        end
        return t, err
      end,
      save = file.save, lock = file.lock,
    }
    local client = bitrix24.oauth((config { store = store }), support.opts())
    assert.equal("OK\n", child_out)
    assert.equal(1, token_requests())
    -- The store still holds the rotated (live) refresh token ...
    local saved = assert(file.load())
    assert.equal(portal:info().refresh_token, saved.refresh_token)
    -- ... and this client works through the next expiry.
    portal:expire_tokens()
    local rows, err = client:call(ITEMS_GET, { id = 1 })
    client:close()
    assert.is_nil(err)
    assert.equal(2, #rows)
  end)

  local HOSTILE = {
    { "not JSON", "{\"access_token\": \"abc" },
    { "a JSON array", "[1, 2, 3]" },
    { "a number for the access token", '{"access_token": 5, "refresh_token": "x"}' },
    { "a table for the refresh token", '{"access_token": "abcdef", "refresh_token": {"a": 1}}' },
    { "a client_endpoint that is not a URL", '{"access_token": "abcdef", "client_endpoint": "not a url"}' },
    { "an infinite number", '{"access_token": 1e999}' },
  }
  for _, case in ipairs(HOSTILE) do
    it("leaves a store holding " .. case[1] .. " alone, and a refresh says STORE_ERROR without raising", function()
      local path = dir .. "/hostile.json"
      local f = assert(io.open(path, "wb"))
      f:write(case[2])
      f:close()
      local seen = 0
      local client = bitrix24.oauth(config { store = bitrix24.file_store(path),
        on_refresh = function() seen = seen + 1 end }, support.opts())
      -- Not seeded over: the content stays for a person to look at.
      assert.equal(case[2], support.read_file(path))
      assert(client:call(ITEMS_GET, { id = 1 }))
      portal:expire_tokens()
      local ok, rows, err = pcall(client.call, client, ITEMS_GET, { id = 1 })
      assert.is_true(ok, tostring(rows))
      assert.is_nil(rows)
      assert.equal("STORE_ERROR", err.code)
      assert.equal("client", err.kind)
      assert.matches("nothing was refreshed", err.description, 1, true)
      assert.equal(0, token_requests())
      assert.equal(0, seen)
      -- The lock was given back: another client locks it at once.
      local lock = assert(require("bitrix24.core").lock(path .. ".lock", 0))
      lock:unlock()
      -- Once a person removes it, the client refreshes and saves again.
      os.remove(path)
      assert(client:call(ITEMS_GET, { id = 1 }))
      client:close()
      assert.equal(portal:info().refresh_token, assert(bitrix24.file_store(path).load()).refresh_token)
    end)
  end

  it("stores only strings and finite numbers from a hostile token answer", function()
    local path = dir .. "/answer.json"
    os.remove(path)
    local seen
    local client = bitrix24.oauth(config { store = bitrix24.file_store(path), on_refresh = function(t) seen = t end },
      support.opts())
    local info = portal:info()
    portal:fault { method = "oauth.token", kind = "canned", status = 200, times = 1,
      body = '{"access_token":"' .. info.access_token .. '","refresh_token":"' .. info.refresh_token
        .. '","expires":1e999,"expires_in":{"x":[1e999]},"member_id":"m1"}' }
    portal:expire_tokens()
    local ok, rows, err = pcall(client.call, client, ITEMS_GET, { id = 1 })
    client:close()
    assert.is_true(ok, tostring(rows))
    assert.is_table(err)   -- the canned answer's token is the expired one
    assert.is_nil(seen.expires)
    assert.is_nil(seen.expires_in)
    assert.equal("m1", seen.member_id)
    assert.equal(info.refresh_token, assert(bitrix24.file_store(path).load()).refresh_token)
  end)

  it("writes a store through a new 0600 temp file, whatever temp files a killed writer left", function()
    local path = dir .. "/perm.json"
    os.remove(path)
    local mypid = support.read_file("/proc/self/stat"):match("^(%d+)")
    -- A writer killed mid-write (kill -9) leaves "<path>.tmp.<its pid>":
    -- one from a process that is gone, and one under this process's pid
    -- (pids are reused) that is world-readable.
    local dead = support.run("sh -c 'echo $$'"):match("%d+")
    for _, pid in ipairs { dead, mypid } do
      local f = assert(io.open(path .. ".tmp." .. pid, "wb"))
      f:write("half a write")
      f:close()
      os.execute("chmod 644 '" .. path .. ".tmp." .. pid .. "'")
    end
    local store = bitrix24.file_store(path)
    assert.is_true(store:save { access_token = "abcdef", refresh_token = "ghijkl" })
    assert.equal("600", (support.run("stat -c %a '" .. path .. "'"):gsub("%s+$", "")))
    assert.equal("abcdef", store.load().access_token)
    -- No temp file is left: neither ours nor the dead writer's.
    assert.equal("", (support.run("(ls -A '" .. dir .. "' | grep -F 'perm.json.tmp.' || true)")))
  end)

  describe("core.lock", function()
    local core = require "bitrix24.core"

    it("raises naming the timeout when it is not a number of seconds in [0, 86400]", function()
      for _, bad in ipairs { 0 / 0, -1, 86401, math.huge } do
        local ok, err = pcall(core.lock, dir .. "/t.lock", bad)
        assert.is_false(ok, tostring(bad))
        assert.matches("#2", tostring(err))
        assert.matches("seconds", tostring(err))
      end
      local lock = assert(core.lock(dir .. "/t.lock", 0))
      lock:unlock()
    end)

    it("never follows a planted symlink nor takes a lock on something not a regular file", function()
      -- In a shared directory another user can plant "x.lock -> file of
      -- yours": opening it with O_CREAT would create (or lock) that file.
      local victim = dir .. "/victim"
      os.remove(victim)
      os.remove(dir .. "/planted.lock")
      assert(os.execute("ln -s '" .. victim .. "' '" .. dir .. "/planted.lock'"))
      local lock, err = core.lock(dir .. "/planted.lock", 0)
      assert.is_nil(lock)
      assert.matches("planted.lock", err)
      assert.is_nil(io.open(victim, "rb"), "the symlink's target was created")
      os.remove(dir .. "/planted.lock")
      os.remove(dir .. "/fifo.lock")
      assert(os.execute("mkfifo '" .. dir .. "/fifo.lock'"))
      lock, err = core.lock(dir .. "/fifo.lock", 0)
      assert.is_nil(lock)
      assert.matches("not a regular file", err)
      os.remove(dir .. "/fifo.lock")
    end)
  end)
end)
