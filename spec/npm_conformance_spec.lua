-- A client we did not write against the fake portal: the official JS SDK
-- @bitrix24/b24jssdk from npm, run by node over HTTPS (the SDK refuses plain
-- http webhooks). What the SDK gets back is checked against FACTS.md and the
-- recorded real answers in spec/fixtures/real/.
--
-- The package is installed at spec time into spec/.npm/ (gitignored; kept
-- between runs, installed again when missing or of another version). When
-- npm cannot install it, the spec fails and says so: it never passes
-- without having run the SDK.

local fake = require "bitrix24.fake.server"
local json = require "bitrix24.fake.json" -- keeps integers and key order
local default_data = require "bitrix24.fake.data"

local SDK = "@bitrix24/b24jssdk"
local SDK_VERSION = "2.2.0"   -- the version whose API the script was written for
local NPM_DIR = "spec/.npm"
local INSTALL_TIMEOUT = 180   -- seconds for npm install
local RUN_TIMEOUT = 120       -- seconds for the node script

local function quote(s) return "'" .. tostring(s):gsub("'", [['\'']]) .. "'" end

-- Runs a shell command; returns whether it exited 0, and its output.
local function sh(cmd)
  local p = assert(io.popen("(" .. cmd .. ") 2>&1; echo \"exit=$?\""))
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("exit=(%d+)%s*$"))
  return rc == 0, (out:gsub("exit=%d+%s*$", ""))
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function fixture(name)
  return (assert(read("spec/fixtures/real/" .. name), "missing fixture " .. name):gsub("%s+$", ""))
end

local function installed_version(dir)
  local t = json.decode(read(dir .. "/node_modules/" .. SDK .. "/package.json") or "")
  return type(t) == "table" and t.version or nil
end

-- Installs the SDK into a fresh folder, then renames it into place, so that
-- a run in parallel never sees half an install.
local function ensure_sdk()
  if installed_version(NPM_DIR) == SDK_VERSION then return end
  local ok, out = sh("command -v npm && command -v node && node --version")
  assert(ok, "node and npm are needed for this spec and were not found:\n" .. out)
  local tmp = NPM_DIR .. ".tmp." .. tostring(os.time()) .. tostring(math.random(1e6))
  assert(sh("mkdir -p " .. quote(tmp)))
  local f = assert(io.open(tmp .. "/package.json", "wb"))
  f:write('{"private":true,"description":"test-only install for spec/npm_conformance_spec.lua"}\n')
  f:close()
  ok, out = sh("cd " .. quote(tmp) .. " && timeout -k 5 " .. INSTALL_TIMEOUT ..
    " npm install --no-audit --no-fund --ignore-scripts --no-package-lock --loglevel=error " ..
    SDK .. "@" .. SDK_VERSION)
  if not ok or installed_version(tmp) ~= SDK_VERSION then
    sh("rm -rf " .. quote(tmp))
    error("npm could not install " .. SDK .. "@" .. SDK_VERSION .. " (is the npm registry reachable? " ..
      "this spec needs it and fails without it):\n" .. out:sub(-2000), 0)
  end
  if installed_version(NPM_DIR) ~= SDK_VERSION then sh("rm -rf " .. quote(NPM_DIR)) end
  if not os.rename(tmp, NPM_DIR) then sh("rm -rf " .. quote(tmp)) end -- another run was first
  assert(installed_version(NPM_DIR) == SDK_VERSION, "no usable " .. SDK .. " in " .. NPM_DIR)
end

-- Ids (strings, ascending) of the leads the webhook user may read.
local function readable_lead_ids()
  local ids = {}
  for _, rec in ipairs(default_data().leads) do
    if rec.access ~= "none" then ids[#ids + 1] = rec.ID end
  end
  table.sort(ids)
  for i, id in ipairs(ids) do ids[i] = string.format("%d", id) end
  return ids
end

describe("#npm @bitrix24/b24jssdk against the fake portal over HTTPS", function()
  local got, raw = {}, {}

  setup(function()
    local ok, out = sh("node -e 'process.exit(Number(process.versions.node.split(\".\")[0]) >= 20 ? 0 : 3)'")
    assert(ok, "this spec needs node >= 20 (the SDK's engines) and npm:\n" .. out)
    ensure_sdk()
    -- https_only: the SDK must reach it over HTTPS, as a real portal demands.
    local portal = fake.start { https_only = true, timeout = 300 }
    local ok, out = pcall(function()
      local env = table.concat({
        "B24_SDK_DIR=" .. quote(NPM_DIR),
        "B24_HOOK_URL=" .. quote(portal.https_webhook_url),
        "B24_BAD_HOOK_URL=" .. quote((portal.https_webhook_url:gsub("/[^/]+/$", "/wrongcode0000000/"))),
        "B24_CONTROL_URL=" .. quote(portal.url),
        "NODE_EXTRA_CA_CERTS=" .. quote(portal.ca_file),
      }, " ")
      local _, text = sh(env .. " timeout -k 5 " .. RUN_TIMEOUT .. " node spec/npm/b24jssdk_conformance.cjs")
      return text
    end)
    portal:stop()
    assert(ok, out)
    for line in out:gmatch("[^\n]+") do
      local t = json.decode(line)
      if type(t) == "table" and t.check then
        got[t.check], raw[t.check] = t, line
      end
    end
    -- The script prints "done" last; anything else is its own failure.
    assert(got.done, "the node script did not finish:\n" .. out:sub(-3000))
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
    local want = readable_lead_ids()
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
