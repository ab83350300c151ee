-- bin/b24 against the fake portal: output, exit status, and no secret in
-- anything it prints.

local support = require "support"
local core = require "bitrix24.core"

describe("b24", function()
  local portal
  local B24 = support.ROOT .. "/bin/b24"

  support.use_portal(nil, function(p) portal = p end)

  local function b24(args, env)
    env = env or {}
    if env.BITRIX24_WEBHOOK_URL == nil then env.BITRIX24_WEBHOOK_URL = portal.webhook_url end
    env.LUA_VERSION = support.LUA_VERSION
    return support.run(support.LUA .. " " .. B24 .. " " .. args, env)
  end

  local function no_secret(...)
    for i = 1, select("#", ...) do
      assert.not_matches(portal.code, (select(i, ...)), 1, true)
    end
  end

  it("prints lead 1's contacts as JSON", function()
    local out, err, status = b24("crm.lead.contact.items.get id=1")
    assert.equal(0, status, err)
    assert.equal("", err)
    local rows = core.json_decode(out)
    assert.same({
      { CONTACT_ID = 1010, SORT = 10, ROLE_ID = 0, IS_PRIMARY = "Y" },
      { CONTACT_ID = 1011, SORT = 20, ROLE_ID = 0, IS_PRIMARY = "N" },
    }, rows)
    no_secret(out, err)
  end)

  it("prints an answer the same way every time: object keys sorted", function()
    local out, err, status = b24("crm.lead.contact.items.get id=1")
    assert.equal(0, status, err)
    assert.equal('[{"CONTACT_ID":1010,"IS_PRIMARY":"Y","ROLE_ID":0,"SORT":10},'
      .. '{"CONTACT_ID":1011,"IS_PRIMARY":"N","ROLE_ID":0,"SORT":20}]\n', out)
  end)

  it("prints [] for a lead without contacts", function()
    local out, _, status = b24("crm.lead.contact.items.get id=2")
    assert.equal(0, status)
    assert.equal("[]\n", out)
  end)

  it("takes parameters as JSON, nested keys and from stdin", function()
    local out, err, status = b24([[crm.lead.contact.add --json '{"id": 2}' fields[CONTACT_ID]=1010 fields[IS_PRIMARY]=Y]])
    assert.equal(0, status, err)
    assert.equal("true\n", out)
    local input = os.tmpname()
    local f = assert(io.open(input, "w"))
    f:write('{"id": 2}\n')
    f:close()
    out, err, status = b24("crm.lead.contact.items.get --json - < " .. input)
    os.remove(input)
    assert.equal(0, status, err)
    local rows = core.json_decode(out)
    assert.equal(1010, rows[1].CONTACT_ID)
    assert.equal("Y", rows[1].IS_PRIMARY)
  end)

  it("prints a portal error on stderr with exit status 1", function()
    local out, err, status = b24("crm.lead.contact.items.get id=13")
    assert.equal(1, status)
    assert.equal("", out)
    assert.matches("ACCESS_DENIED", err)
    no_secret(out, err)
  end)

  it("prints a wrong webhook's error without the code", function()
    local bad = portal.webhook_url:gsub(portal.code, "wrongcode12345")
    local out, err, status = b24("crm.lead.contact.items.get id=1", { BITRIX24_WEBHOOK_URL = bad })
    assert.equal(1, status)
    assert.matches("401", err)
    assert.not_matches("wrongcode12345", out .. err, 1, true)
  end)

  it("exits 2 on a usage error and sends nothing", function()
    local _, err, status = b24("crm.lead.contact.items.get id=0")
    assert.equal(2, status)
    assert.matches("params%.id must be a positive integer", err)
    _, err, status = b24("")
    assert.equal(2, status)
    assert.matches("usage", err)
    _, err, status = b24("crm.lead.contact.items.get --bogus")
    assert.equal(2, status)
    assert.matches("unknown option", err)
    assert.equal(0, #portal:requests())
  end)

  it("exits 2 with one line for a malformed BITRIX24_WEBHOOK_URL", function()
    for _, url in ipairs { "not a url", "ftp://x/rest/1/abcdefsecret42/", "https://portal.example/abcdefsecret42" } do
      local out, err, status = b24("crm.lead.contact.items.get id=1", { BITRIX24_WEBHOOK_URL = url })
      assert.equal(2, status, err)
      assert.equal("", out)
      assert.matches("^b24: [^\n]*webhook URL[^\n]*\n$", err)
      assert.is_nil(err:find("traceback", 1, true), err)
      assert.is_nil(err:find("abcdefsecret42", 1, true), err)
    end
  end)

  it("never echoes a webhook URL given as the method name", function()
    local out, err, status = b24(portal.webhook_url .. "crm.lead.contact.items.get id=1")
    assert.equal(2, status)
    assert.matches("method must be", err)
    no_secret(out, err)
    assert.equal(0, #portal:requests())
  end)

  it("says what to set when no credentials are given", function()
    local _, err, status = b24("crm.lead.contact.items.get id=1", { BITRIX24_WEBHOOK_URL = "" })
    assert.equal(2, status)
    assert.matches("BITRIX24_WEBHOOK_URL", err)
  end)

  local function write_tmp(text)
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
    return path
  end

  it("runs a batch from a JSON file and prints each result", function()
    local path = write_tmp('{"a": ["crm.lead.contact.items.get", {"id": 1}], '
      .. '"b": ["crm.lead.contact.items.get", {"id": 13}]}')
    local out, err, status = b24("--batch " .. path)
    os.remove(path)
    assert.equal(1, status, err)
    local printed = core.json_decode(out)
    assert.equal(1010, printed.a.result[1].CONTACT_ID)
    assert.equal("ACCESS_DENIED", printed.b.error.code)
    assert.equal(1, #portal:requests())
    portal:reset()
    path = write_tmp('{"a": ["crm.lead.contact.items.get", {"id": 1}]}')
    out, err, status = b24("--batch - < " .. path)
    os.remove(path)
    assert.equal(0, status, err)
    assert.equal(2, #core.json_decode(out).a.result)
  end)

  it("fetches the contacts of many leads, ids from stdin", function()
    local ids = {}
    for i = 1, 120 do ids[i] = i end
    local path = write_tmp(table.concat(ids, "\n"))
    local out, err, status = b24("--lead-contacts - < " .. path)
    os.remove(path)
    assert.equal(1, status)
    assert.matches("lead 13: .*ACCESS_DENIED", err)
    local printed = core.json_decode(out)
    assert.equal(1010, printed["1"][1].CONTACT_ID)
    assert.same({}, printed["2"])
    assert.is_nil(printed["13"])
    assert.equal(3, #portal:requests())
    -- Not a terminal: no progress bar in stderr.
    assert.not_matches("%[#", err)
  end)

  it("exits 1 when the answer leaves leads out", function()
    portal:fault { method = "batch", kind = "canned", status = 200, times = 1,
      body = '{"result":{"result":{},"result_error":[]}}' }
    local out, err, status = b24("--lead-contacts 1,2,3")
    assert.equal(1, status)
    assert.equal("", out)
    assert.matches("BAD_RESPONSE", err)
    no_secret(out, err)
  end)

  it("draws a progress bar when stderr is a terminal", function()
    local cmd = "BITRIX24_WEBHOOK_URL=" .. portal.webhook_url .. " LUA_VERSION=" .. support.LUA_VERSION
      .. " " .. support.LUA .. " " .. B24 .. " --lead-contacts 1,2,3,4,5,6 >/dev/null"
    local out, _, status = support.run("script -qec '" .. cmd .. "' /dev/null")
    assert.equal(0, status)
    assert.matches("%[#+%] 6/6 leads", out)
  end)

  describe("--all", function()
    local function lines(out)
      local rows = {}
      for line in out:gmatch("[^\n]+") do rows[#rows + 1] = core.json_decode(line) end
      return rows
    end

    it("prints every row of a list method, one JSON object a line, 2,500 rows a request", function()
      portal:reset { leads = 3000 }
      local want = require("bitrix24.fake.portal").new({ leads = 3000, code = "c" }).leads.ids
      local out, err, status = b24("crm.lead.list --all --fast 'select[]=ID' 'select[]=TITLE'")
      assert.equal(0, status, err)
      local rows = lines(out)
      assert.equal(3000, #rows)
      for i, row in ipairs(rows) do
        assert.same({ ID = tostring(want[i]), TITLE = "Lead #" .. want[i] }, row)
      end
      -- 2,500 rows, then 500 and an empty page, then one call from the last id.
      assert.equal(3, #portal:requests())
      assert.equal("", err) -- not a terminal: no progress bar
      no_secret(out, err)

      -- Normal mode keeps the order asked for; --limit stops early.
      out, err, status = b24("crm.lead.list --all --limit 120 'order[ID]=DESC' 'select[]=ID'")
      assert.equal(0, status, err)
      rows = lines(out)
      assert.equal(120, #rows)
      for i, row in ipairs(rows) do assert.equal(tostring(want[3001 - i]), row.ID) end
      assert.equal(3 + 2, #portal:requests()) -- a counted call, then one batch of 2 pages
    end)

    it("streams: the first rows are out before the export ends", function()
      portal:reset { leads = 1000 }
      portal:configure { latency = 0.05 }
      local cmd = "BITRIX24_WEBHOOK_URL=" .. portal.webhook_url .. " LUA_VERSION=" .. support.LUA_VERSION
        .. " " .. support.LUA .. " " .. B24 .. " crm.lead.list --all --fast --page-batch 1 'select[]=ID'"
      local pipe = assert(io.popen(cmd))
      local first = pipe:read("*l")
      local sent = #portal:requests()
      local rest = pipe:read("*a")
      pipe:close()
      assert.equal("1", core.json_decode(first).ID)
      assert.is_true(sent < 21, sent .. " of 21 requests were sent before the first row came out")
      assert.equal(999, #lines(rest))
      assert.equal(21, #portal:requests())
    end)

    it("prints the rows before a failure, then the error, with exit status 1", function()
      portal:reset { leads = 3000 }
      portal:fault { method = "batch", kind = "error500" }
      local out, err, status = b24("crm.lead.list --all 'select[]=ID'")
      assert.equal(1, status)
      assert.equal(50, #lines(out)) -- the counted call's page
      assert.matches("INTERNAL_SERVER_ERROR", err)
      no_secret(out, err)
    end)

    it("draws a progress bar of rows when stderr is a terminal", function()
      portal:reset { leads = 120 }
      local cmd = "BITRIX24_WEBHOOK_URL=" .. portal.webhook_url .. " LUA_VERSION=" .. support.LUA_VERSION
        .. " " .. support.LUA .. " " .. B24 .. " crm.lead.list --all >/dev/null"
      local out, _, status = support.run("script -qec '" .. cmd .. "' /dev/null")
      assert.equal(0, status)
      assert.matches("%[#+%] 120/120 rows", out)
    end)

    it("refuses bad export options with exit status 2, sending nothing", function()
      for _, args in ipairs { "crm.lead.list --fast", "crm.lead.list --all --limit x",
          "crm.lead.list --all --page-batch 51", "crm.lead.list --all --parallel 0", "--all" } do
        local _, err, status = b24(args)
        assert.equal(2, status, args)
        assert.is_true(#err > 0)
      end
      assert.equal(0, #portal:requests())
    end)
  end)

  it("rejects two jobs at once", function()
    local _, err, status = b24("crm.lead.contact.items.get --lead-contacts 1")
    assert.equal(2, status)
    assert.matches("usage", err)
  end)

  it("prints the time block with --time", function()
    local _, err, status = b24("crm.lead.contact.items.get id=1 --time")
    assert.equal(0, status)
    assert.matches('time: {.*"start"', err)
  end)
end)
