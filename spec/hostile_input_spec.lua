-- Hostile input: method names that could change the URL, params that
-- cannot be sent (cycles, deep nesting, NaN, non-UTF-8, functions,
-- userdata, threads), huge values, and answers far larger than
-- max_response. Programmer errors raise before anything is sent (the
-- portal logs no request); server-side trouble is returned as nil, err;
-- and the client keeps working afterwards.

local support = require "support"
local bitrix24 = require "bitrix24"
local errors = require "bitrix24.errors"
local socket = require "socket"

local ITEMS_GET = "crm.lead.contact.items.get"

describe("hostile input", function()
  local portal, client
  support.use_portal({ client = true }, function(p, c) portal, client = p, c end)

  -- f must raise an error matching `pattern` and send nothing.
  local function refused(pattern, f)
    local ok, msg = pcall(f)
    assert.is_false(ok, "did not raise")
    assert.is_string(msg)
    assert.matches(pattern, msg)
    assert.is_nil(msg:find("\n"), "not one line: " .. msg)
    assert.same({}, portal:requests())
  end

  local function still_works()
    local rows, err = client:call(ITEMS_GET, { id = 1 })
    assert.is_nil(err)
    assert.equal(1010, rows[1].CONTACT_ID)
  end

  describe("method names", function()
    local BAD = {
      "crm/lead/contact", "../crm.lead.list", "crm..lead", "..", ".crm", "crm.", "crm lead", "crm.lead list",
      "crm?x=1", "crm#x", "crm\0lead", "crm.lead\0", "\0", "crm.лид.list", "crm.lead\r\nX-Injected: 1",
      "crm%2Flead", "", " ", "crm\tlead", "crm.lead.list/../../profile",
    }
    for _, name in ipairs(BAD) do
      it(("refuses %q everywhere, sending nothing"):format(name):gsub("\\\n", "\\n"), function()
        refused("method must be", function() client:call(name, { id = 1 }) end)
        refused("method must be", function() client:batch { a = { name, { id = 1 } } } end)
        refused("method must be", function() client:each(name, {}) end)
        still_works()
      end)
    end

    it("refuses a method name that is not a string", function()
      for _, v in ipairs { 42, true, {}, print } do
        refused("method must be", function() client:call(v) end)
      end
    end)

    it("turns a typed-form name that is not a method into an error, not a request", function()
      refused("method must be", function() client["crm/lead"].list {} end)
    end)
  end)

  describe("params", function()
    local function deep(n)
      local t = { leaf = 1 }
      for _ = 1, n do t = { t } end
      return t
    end
    local cycle = { a = 1 }
    cycle.self = cycle
    local co = coroutine.create(function() end)
    local CASES = {
      { "a cycle", { fields = cycle }, "nested too deep" },
      { "depth 1,000", deep(1000), "nested too deep" },
      { "NaN", { x = 0 / 0 }, "NaN or infinite" },
      { "infinity", { x = 1 / 0 }, "NaN or infinite" },
      { "-infinity", { x = -1 / 0 }, "NaN or infinite" },
      { "a function", { x = print }, "cannot encode function" },
      { "a userdata", { x = io.stdout }, "cannot encode userdata" },
      { "a thread", { x = co }, "cannot encode thread" },
      { "a boolean key", { [true] = 1 }, "key that is not a string or a number" },
      { "a table key", { [{}] = 1 }, "key that is not a string or a number" },
    }
    for _, c in ipairs(CASES) do
      it("raises for " .. c[1] .. " in a call and in a batch, sending nothing", function()
        refused(c[3], function() client:call("crm.lead.list", c[2]) end)
        refused(c[3], function() client:batch { a = { "crm.lead.list", c[2] } } end)
        still_works()
      end)
    end

    it("raises for a string that is not UTF-8, naming the key", function()
      refused("not UTF%-8 at filter.TITLE", function()
        client:call("crm.lead.list", { filter = { TITLE = "caf\233" } })
      end)
      refused("not UTF%-8", function() client:call("crm.lead.list", { ["k\255"] = 1 }) end)
      refused("not UTF%-8", function() client:call("crm.lead.list", { x = "\237\160\128" }) end) -- a surrogate
      still_works()
    end)

    it("keeps NUL bytes and non-ASCII text intact", function()
      local rows = assert(client:call("crm.lead.list", { filter = { TITLE = "a\0b Лид ✓" } }))
      assert.is_table(rows)
      local log = portal:requests()
      assert.equal("a\0b Лид ✓", log[1].params.filter.TITLE)
    end)

    it("sends a 10 MB string whole", function()
      local big = string.rep("0123456789", 1024 * 1024)
      local rows, err = client:call("crm.lead.list", { filter = { TITLE = big } })
      assert.is_nil(err)
      assert.is_table(rows)
      assert.equal(#big, #portal:requests()[1].params.filter.TITLE)
      still_works()
    end)
  end)

  describe("the C encoders (regressions)", function()
    local core = require "bitrix24.core"

    it("writes a table with holes and a [0] as an object, not as an array with a nil", function()
      local t = { 10, 20, 30, 40 }
      t[3] = nil
      t[0] = 0
      local decoded = core.json_decode(core.json_encode { x = t })
      assert.same({ ["0"] = 0, ["1"] = 10, ["2"] = 20, ["4"] = 40 }, decoded.x)
      assert.equal("x[0]=0&x[1]=10&x[2]=20&x[4]=40", core.query { x = t })
    end)

    it("writes a float with the fewest digits that read back as the same number", function()
      local floats = { 0.1, 1 / 3, 1e300, -2.5e-7, 1733094000.1234, 2 ^ 0.5 }
      local text = core.json_encode(floats)
      assert.equal("[0.1,0.3333333333333333,1e+300,-2.5e-07,1733094000.1234,1.4142135623730951]", text)
      assert.same(floats, core.json_decode(text))
      assert.equal("x=0.1", core.query { x = 0.1 })
    end)

    it("keeps keys with NUL bytes apart in a batch query", function()
      assert.equal("a%00b=1&a%00c=2", core.query { ["a\0b"] = 1, ["a\0c"] = 2 })
    end)

    it("refuses a string key beside the number key it reads as, in both encoders", function()
      for _, t in ipairs { { ["1"] = "s", [1] = "n", x = 1 }, { x = { ["-3"] = 1, [-3] = 2 } } } do
        assert.has_error(function() core.query(t) end)
        assert.has_error(function() core.json_encode(t) end)
      end
      assert.matches('two keys written "%-3" at x', select(2, pcall(core.query, { x = { ["-3"] = 1, [-3] = 2 } })))
      assert.matches('two keys written "%-3" at x', select(2, pcall(core.json_encode, { x = { ["-3"] = 1, [-3] = 2 } })))
    end)

    it("keeps a timeout below a millisecond a timeout (libcurl reads 0 as none)", function()
      local hasty = bitrix24.webhook(portal.webhook_url, support.opts { timeout = 0.0001 })
      portal:fault { kind = "latency", delay = 3 }
      local t0 = socket.gettime()
      local result, err = hasty:call(ITEMS_GET, { id = 1 })
      hasty:close()
      assert.is_nil(result)
      assert.equal("TIMEOUT", err.code)
      assert.is_true(socket.gettime() - t0 < 2)
    end)
  end)

  describe("huge answers", function()
    it("fails with RESPONSE_TOO_LARGE for a canned answer above max_response, then works", function()
      local small = bitrix24.webhook(portal.webhook_url, support.opts { max_response = 1024 * 1024 })
      portal:fault { method = ITEMS_GET, kind = "canned", times = 1,
        body = '{"result":"' .. string.rep("x", 2 * 1024 * 1024) .. '"}' }
      local result, err = small:call(ITEMS_GET, { id = 1 })
      assert.is_nil(result)
      assert.is_true(errors.is_error(err))
      assert.equal("RESPONSE_TOO_LARGE", err.code)
      assert.matches("max_response", tostring(err))
      assert(small:call(ITEMS_GET, { id = 1 }))
      small:close()
    end)

    it("gives back the memory of a 48 MB answer, and the next small call works", function()
      -- In a child process, so its RSS is not the spec runner's: a small
      -- call, the big one, its result dropped, then a small call again.
      -- Every block involved is above glibc's largest mmap threshold
      -- (32 MiB), so what is freed goes back to the system at once.
      portal:fault { method = "crm.lead.list", kind = "canned", times = 1,
        body = '{"result":"' .. string.rep("x", 48 * 1024 * 1024) .. '"}' }
      collectgarbage()
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write(([[
        package.path = %q .. "/lua/?.lua;" .. package.path
        package.cpath = %q .. "/build/" .. %q .. "/?.so;" .. package.cpath
        local bitrix24 = require "bitrix24"
        local function rss()
          local status = io.open("/proc/self/status"):read("*a")
          return tonumber(status:match("VmRSS:%%s*(%%d+)")) * 1024
        end
        local client = bitrix24.webhook(%q, { rate = 1000, burst = 100000, tries = 1 })
        local answer = assert(client:call(%q, { id = 1 }))
        answer = nil
        collectgarbage(); collectgarbage()
        local base = rss()
        answer = assert(client:call("crm.lead.list"))
        local size = #answer
        answer = nil
        collectgarbage(); collectgarbage()
        local after = rss()
        local small = assert(client:call(%q, { id = 1 }))
        io.write(size, " ", after - base, " ", #small, "\n")
      ]]):format(support.ROOT, support.ROOT, support.LUA_VERSION, portal.webhook_url, ITEMS_GET, ITEMS_GET))
      f:close()
      local out, err = support.run(support.LUA .. " " .. script)
      os.remove(script)
      local size, grown, small = out:match("^(%d+) (%-?%d+) (%d+)")
      assert(size, "the child failed: " .. out .. err)
      assert.equal(48 * 1024 * 1024, tonumber(size))
      assert.equal(2, tonumber(small))
      assert.is_true(tonumber(grown) < 16 * 1024 * 1024,
        "RSS after the answer was dropped: +" .. math.floor(grown / 1048576) .. " MiB")
    end)

    it("stops reading a 100 MB answer at the default 64 MiB, then works again", function()
      -- The fake portal takes control bodies up to 64 MB, so a small
      -- server of our own sends the 100 MB: the first connection gets
      -- them, later ones a small envelope. It stops by itself.
      local probe = assert(socket.bind("127.0.0.1", 0))
      local _, port = probe:getsockname()
      probe:close()
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write(([[
        local socket = require "socket"
        local server = assert(socket.bind("127.0.0.1", %d))
        server:settimeout(30)
        local served = 0
        for _ = 1, 10 do
          local c = server:accept()
          if not c then break end
          c:settimeout(30)
          -- A connection without a request (the readiness probe) is not counted.
          local line, length = c:receive("*l"), 0
          while line and line ~= "" do
            length = tonumber(line:lower():match("^content%%-length:%%s*(%%d+)")) or length
            line = c:receive("*l")
          end
          if line and length > 0 then c:receive(length) end
          if line then
            served = served + 1
            if served == 1 then
              local size = 100 * 1024 * 1024
              c:send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " .. size .. "\r\n\r\n")
              local chunk = string.rep("x", 1024 * 1024)
              c:send('{"result":"')
              for _ = 1, 100 do if not c:send(chunk) then break end end
            else
              local body = '{"result":true}'
              c:send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                .. "Content-Length: " .. #body .. "\r\n\r\n" .. body)
            end
          end
          c:close()
          if served == 2 then break end
        end
      ]]):format(port))
      f:close()
      os.execute(support.LUA .. " " .. script .. " >/dev/null 2>&1 &")
      local deadline = socket.gettime() + 5
      while socket.gettime() < deadline do
        local c = socket.tcp()
        c:settimeout(0.2)
        local ok = c:connect("127.0.0.1", port)
        c:close()
        if ok then break end
        socket.sleep(0.05)
      end
      local big = bitrix24.webhook("http://127.0.0.1:" .. port .. "/rest/1/abcd/", support.opts())
      local result, err = big:call("crm.lead.list")
      os.remove(script)
      assert.is_nil(result)
      assert.is_true(errors.is_error(err))
      assert.equal("RESPONSE_TOO_LARGE", err.code)
      assert.matches("67108864 bytes", tostring(err))
      assert.is_nil(tostring(err):find("\n"))
      local ok = big:call("crm.lead.list")
      assert.is_true(ok)
      big:close()
      still_works()
    end)
  end)
end)
