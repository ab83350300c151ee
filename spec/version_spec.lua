-- One version everywhere: the release rockspecs, bitrix24._VERSION, the C
-- core's _VERSION, the fake portal's, the User-Agent a portal receives and
-- the newest entry of CHANGELOG.md.

local support = require "support"
local bitrix24 = require "bitrix24"
local core = require "bitrix24.core"

-- The versions of the release rockspecs (the ones not "scm"), by package.
local function release_rockspecs()
  local found = {}
  local names = support.run("cd '" .. support.ROOT .. "' && ls rockspecs")
  for name in names:gmatch("[^\n]+") do
    local text = support.read_file(support.ROOT .. "/rockspecs/" .. name)
    local package = text:match('\npackage = "([^"]+)"')
    local version = text:match('\nversion = "([^"]+)"')
    assert.equal(name, package .. "-" .. version .. ".rockspec", "the file name says another version")
    if not version:match("^scm") then
      found[#found + 1] = { name = name, package = package, version = version, text = text }
    end
  end
  return found
end

describe("the version", function()
  local portal

  support.use_portal({ reset = false }, function(p) portal = p end)

  local version = bitrix24._VERSION

  it("is a release number", function()
    assert.matches("^%d+%.%d+%.%d+$", version)
  end)

  it("is the one of every release rockspec, and the fake's depends on that bitrix24", function()
    local specs = release_rockspecs()
    local packages = {}
    for _, s in ipairs(specs) do
      packages[s.package] = true
      assert.equal(version .. "-1", s.version, s.name)
      assert.matches('tag = "v' .. version:gsub("%.", "%%.") .. '"', s.text, 1, false, s.name)
      if s.package == "bitrix24-fake" then
        assert.is_truthy(s.text:find('"bitrix24 == ' .. version .. '"', 1, true), s.name)
      end
    end
    assert.same({ bitrix24 = true, ["bitrix24-fake"] = true }, packages)
  end)

  it("is the C core's", function()
    assert.equal(version, core._VERSION)
  end)

  it("is the fake portal's", function()
    assert.equal(version, require("bitrix24.fake.server")._VERSION)
  end)

  it("is in the User-Agent a portal receives", function()
    portal:reset()
    local client = bitrix24.webhook(portal.webhook_url, support.opts())
    assert(client:call("crm.lead.contact.items.get", { id = 1 }))
    client:close()
    local requests = portal:requests()
    assert.equal(1, #requests)
    assert.equal("bitrix24-lua/" .. version, requests[1].user_agent)
  end)

  it("is CHANGELOG.md's newest entry", function()
    local changelog = support.read_file(support.ROOT .. "/CHANGELOG.md")
    assert.equal(version, changelog:match("\n## (%d+%.%d+%.%d+)"))
  end)
end)
