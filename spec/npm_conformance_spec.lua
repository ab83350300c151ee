-- Clients we did not write against the fake portal: the official JS SDK
-- @bitrix24/b24jssdk and @2bad/bitrix, from npm, run by node over HTTPS (the
-- official SDK refuses plain http webhooks; the portal is started with
-- https_only as a real one answers). What they get back is checked against
-- FACTS.md and the recorded real answers in spec/fixtures/real-responses/.
--
-- The packages are installed at spec time into spec/.npm/ (gitignored; kept
-- between runs, installed again when missing or of another version). When
-- npm cannot install them, the spec fails and says so: it never passes
-- without having run the clients.

local support = require "support"
local json = require "bitrix24.fake.json" -- keeps integers and key order

-- The packages and the versions whose API the scripts were written for.
local PACKAGES = { { "@bitrix24/b24jssdk", "2.2.0" }, { "@2bad/bitrix", "2.5.1" } }
local NPM_DIR = "spec/.npm"
local INSTALL_TIMEOUT = 180   -- seconds for npm install
local RUN_TIMEOUT = 120       -- seconds for one node script

local quote, read = support.quote, support.try_read

-- Runs a shell command; returns whether it exited 0, and its output.
local function sh(cmd)
  local p = assert(io.popen("(" .. cmd .. ") 2>&1; echo \"exit=$?\""))
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("exit=(%d+)%s*$"))
  return rc == 0, (out:gsub("exit=%d+%s*$", ""))
end

local function fixture(name)
  return (assert(read(support.REAL_RESPONSES .. "/" .. name), "missing fixture " .. name):gsub("%s+$", ""))
end

-- Whether `dir` holds every package at its version.
local function complete(dir)
  for _, p in ipairs(PACKAGES) do
    local t = json.decode(read(dir .. "/node_modules/" .. p[1] .. "/package.json") or "")
    if type(t) ~= "table" or t.version ~= p[2] then return false end
  end
  return true
end

-- Installs the packages into a fresh folder, then renames it into place, so
-- that a run in parallel never sees half an install.
local function ensure_packages()
  if complete(NPM_DIR) then return end
  local tmp = NPM_DIR .. ".tmp." .. tostring(os.time()) .. tostring(math.random(1e6))
  assert(sh("mkdir -p " .. quote(tmp)))
  local f = assert(io.open(tmp .. "/package.json", "wb"))
  f:write('{"private":true,"description":"test-only install for spec/npm_conformance_spec.lua"}\n')
  f:close()
  local specs = {}
  for i, p in ipairs(PACKAGES) do specs[i] = p[1] .. "@" .. p[2] end
  local ok, out = sh("cd " .. quote(tmp) .. " && timeout -k 5 " .. INSTALL_TIMEOUT ..
    " npm install --no-audit --no-fund --ignore-scripts --no-package-lock --loglevel=error " ..
    table.concat(specs, " "))
  if not ok or not complete(tmp) then
    sh("rm -rf " .. quote(tmp))
    error("npm could not install " .. table.concat(specs, " ") .. " (is the npm registry reachable? " ..
      "this spec needs it and fails without it):\n" .. out:sub(-2000), 0)
  end
  if not complete(NPM_DIR) then sh("rm -rf " .. quote(NPM_DIR)) end
  if not os.rename(tmp, NPM_DIR) then sh("rm -rf " .. quote(tmp)) end -- another run was first
  assert(complete(NPM_DIR), "no usable packages in " .. NPM_DIR)
end

-- Starts a portal that answers REST only over HTTPS (as a real one), runs
-- one script of spec/npm/ against it, and returns what it printed: check ->
-- decoded line, and check -> the line as printed.
local function run_script(name)
  local ok, out = sh("node -e 'process.exit(Number(process.versions.node.split(\".\")[0]) >= 20 ? 0 : 3)'")
  assert(ok, "this spec needs node >= 20 (the SDK's engines) and npm:\n" .. out)
  ensure_packages()
  local portal = support.start_portal { https_only = true, timeout = 300 }
  ok, out = pcall(function()
    local env = table.concat({
      "B24_SDK_DIR=" .. quote(NPM_DIR),
      "B24_HOOK_URL=" .. quote(portal.https_webhook_url),
      "B24_BAD_HOOK_URL=" .. quote((portal.https_webhook_url:gsub("/[^/]+/$", "/wrongcode0000000/"))),
      "B24_CONTROL_URL=" .. quote(portal.url),
      "NODE_EXTRA_CA_CERTS=" .. quote(portal.ca_file),
    }, " ")
    local _, text = sh(env .. " timeout -k 5 " .. RUN_TIMEOUT .. " node spec/npm/" .. name)
    return text
  end)
  portal:stop()
  assert(ok, out)
  local got, raw = {}, {}
  for line in out:gmatch("[^\n]+") do
    local t = json.decode(line)
    if type(t) == "table" and t.check then
      got[t.check], raw[t.check] = t, line
    end
  end
  -- The script prints "done" last; anything else is its own failure.
  assert(got.done, "the node script " .. name .. " did not finish:\n" .. out:sub(-3000))
  return got, raw
end

describe("#npm @bitrix24/b24jssdk against the fake portal over HTTPS", function()
  local got, raw = {}, {}

  setup(function()
    got, raw = run_script("b24jssdk_conformance.cjs")
  end)

  it("crm.lead.contact.fields: the three documented fields and a time block", function()
    local r = got.fields.result
    assert.same({ "SORT", "IS_PRIMARY", "CONTACT_ID" }, (json.keys(r)))
    assert.equal("integer", r.SORT.type)
    assert.equal("char", r.IS_PRIMARY.type)
    assert.equal("integer", r.CONTACT_ID.type)
    assert.is_true(r.CONTACT_ID.isRequired)
    for _, f in pairs(r) do
      assert.same({ "type", "isRequired", "isReadOnly", "isImmutable", "isMultiple", "isDynamic", "title" },
        (json.keys(f)))
    end
    -- Every key of a recorded real time block is there, with the same type.
    local recorded = json.decode(fixture("fb24-crm-lead-list-page1-next-total.json")).time
    for _, k in ipairs((json.keys(recorded))) do
      assert.equal(type(recorded[k]), type(got.fields.time[k]), k)
    end
    assert.is_true(got.fields.time.processing <= got.fields.time.duration)
  end)

  it("crm.lead.contact.items.get: the docs' example for lead 1, integers and Y/N", function()
    assert.same({
      { CONTACT_ID = 1010, SORT = 10, ROLE_ID = 0, IS_PRIMARY = "Y" },
      { CONTACT_ID = 1011, SORT = 20, ROLE_ID = 0, IS_PRIMARY = "N" },
    }, got["items.get"].result)
    assert.matches('"CONTACT_ID":1010,"SORT":10,"ROLE_ID":0,"IS_PRIMARY":"Y"', raw["items.get"])
  end)

  it("add, items.set, delete, items.delete: true, and false for a repeat (FACTS §7)", function()
    assert.is_true(got.add.result)
    assert.is_false(got["add.again"].result)
    assert.is_true(got["items.set"].result)
    assert.same({
      { CONTACT_ID = 1051, SORT = 20, ROLE_ID = 0, IS_PRIMARY = "Y" },
      { CONTACT_ID = 1050, SORT = 30, ROLE_ID = 0, IS_PRIMARY = "N" },
    }, got["items.get.after.set"].result)
    assert.is_true(got.delete.result)
    assert.is_false(got["delete.again"].result)
    assert.is_true(got["items.delete"].result)
    assert.matches('"result":%[%]', raw["items.get.after.delete"])
  end)

  it("errors reach the SDK with the server's status and body", function()
    local e = got["items.get.bad.id"].error
    assert.equal(400, e.http_status)
    assert.equal('{"error":"","error_description":"The parameter ownerEntityID is invalid or not defined."}', e.body)
    e = got["items.get.denied"].error
    assert.equal(403, e.http_status)
    assert.equal('{"error":"ACCESS_DENIED","error_description":"Access denied!"}', e.body)
  end)

  it("batch: the SDK's encoded $result reference is resolved", function()
    assert.is_true(got.batch.success, raw.batch)
    assert.equal(1010, got.batch.result.first[1].CONTACT_ID, raw.batch)
    assert.is_true(got.batch.result.bind)
    -- It did travel encoded (qs.stringify), and the sub-call got the number.
    local cmd = got["batch.sent"].cmd.bind
    assert.truthy(cmd:find("%24result%5Bfirst%5D%5B0%5D%5BCONTACT_ID%5D", 1, true), cmd)
    assert.equal(1010, got["batch.sent"].calls[2].params.fields.CONTACT_ID)
    assert.same({ { CONTACT_ID = 1010, SORT = 70, ROLE_ID = 0, IS_PRIMARY = "N" } },
      got["items.get.after.batch"].result)
  end)

  it("crm.lead.list: offset pages with start=next, and the SDK's >ID walk, see every lead once", function()
    local want = support.readable_ids("leads")
    local pages, ids = got["list.pages"].pages, {}
    assert.equal(math.ceil(#want / 50), #pages)
    for i, page in ipairs(pages) do
      assert.equal(#want, page.total)
      assert.equal(i < #pages, page.more)
      for _, id in ipairs(page.ids) do ids[#ids + 1] = id end
    end
    assert.same(want, ids)
    assert.is_true(got["list.all"].success)
    assert.same(want, got["list.all"].ids)
    -- Ids are strings, as in the recorded crm.lead.list answer.
    local recorded = json.decode(fixture("fb24-crm-lead-list-page1-next-total.json"))
    assert.equal("string", type(recorded.result[1].ID))
    assert.equal(type(recorded.result[1].ID), type(ids[1]))
  end)

  it("a wrong webhook code: 401 and the recorded NO_AUTH_FOUND body", function()
    local e = got["wrong.code"].error
    assert.equal(401, e.http_status)
    assert.equal("NO_AUTH_FOUND", e.code)
    assert.equal(fixture("issue-error-no-auth-found-converted.json"), e.body)
  end)

  it("the rate limit: 503 and the recorded QUERY_LIMIT_EXCEEDED body once the burst is used", function()
    assert.same({ 200, 200, 200, "error", "error" }, got["rate.statuses"].statuses)
    for _, k in ipairs({ "rate.3", "rate.4" }) do
      local e = got[k].error
      assert.equal(503, e.http_status)
      assert.equal("QUERY_LIMIT_EXCEEDED", e.code)
      assert.equal(fixture("issue-error-query-limit-exceeded.json"), e.body)
    end
  end)
end)

describe("#npm @2bad/bitrix against the fake portal over HTTPS", function()
  local got, raw = {}, {}

  setup(function()
    got, raw = run_script("2bad_bitrix_conformance.cjs")
  end)

  it("crm.lead.contact.items.get sent as a GET with a query string", function()
    assert.same({
      { CONTACT_ID = 1010, SORT = 10, ROLE_ID = 0, IS_PRIMARY = "Y" },
      { CONTACT_ID = 1011, SORT = 20, ROLE_ID = 0, IS_PRIMARY = "N" },
    }, got["items.get"].value)
  end)

  it("batch: a reference double-encoded in cmd[...] of a GET query is resolved", function()
    local res = got.batch.value
    assert.is_true(res.result.bind, raw.batch)
    assert.matches('"result_error":%[%]', raw.batch)
    assert.equal("GET", got["batch.sent"].http_method)
    assert.truthy(got["batch.sent"].query:find("%2524result%255Bfirst%255D", 1, true), got["batch.sent"].query)
    assert.same({ { CONTACT_ID = 1011, SORT = 10, ROLE_ID = 0, IS_PRIMARY = "N" } },
      got["items.get.after.batch"].value)
  end)

  it("list: its batch of start=50, 100, ... pages brings every lead once", function()
    local want = support.readable_ids("leads")
    assert.equal(#want, got.list.value.total)
    assert.same(want, got.list.value.ids)
  end)

  it("a wrong webhook code: 401 and the recorded NO_AUTH_FOUND body", function()
    local e = got["wrong.code"].error
    assert.equal(401, e.http_status)
    assert.equal(fixture("issue-error-no-auth-found-converted.json"), e.body)
  end)

  it("the rate limit: 503 and the recorded QUERY_LIMIT_EXCEEDED body once the burst is used", function()
    for i = 0, 2 do assert.is_table(got["rate." .. i].value, raw["rate." .. i]) end
    for i = 3, 4 do
      local e = got["rate." .. i].error
      assert.equal(503, e.http_status)
      assert.equal(fixture("issue-error-query-limit-exceeded.json"), e.body)
    end
  end)
end)
