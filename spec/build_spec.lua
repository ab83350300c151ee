-- The two ways to install: `make install PREFIX=DIR` and the rockspec
-- through `luarocks make`. Each installed tree must work on its own, with
-- the source tree out of the search paths.

local support = require "support"

describe("installation", function()
  local portal, tmp

  support.use_portal({ reset = false }, function(p) portal = p end)

  setup(function()
    tmp = support.tmpdir()
  end)

  teardown(function()
    if tmp and tmp:match("^/tmp/") then support.remove_dir(tmp) end
  end)

  -- Runs a command from / so nothing resolves through the source tree.
  local function run_installed(cmd)
    return support.run("cd / && env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 "
      .. "BITRIX24_WEBHOOK_URL=" .. portal.webhook_url .. " " .. cmd)
  end

  it("make install puts a working b24 and the modules under PREFIX", function()
    local prefix = tmp .. "/prefix"
    local out, err, status = support.run("make -C '" .. support.ROOT .. "' -s install LUA_VERSION="
      .. support.LUA_VERSION .. " PREFIX=" .. prefix)
    assert.equal(0, status, out .. err)
    local abi = support.LUA_VERSION == "luajit" and "5.1" or support.LUA_VERSION
    for _, f in ipairs { "/share/lua/" .. abi .. "/bitrix24.lua", "/lib/lua/" .. abi .. "/bitrix24/core.so",
      "/bin/b24", "/bin/b24-fake-portal" } do
      assert.is_truthy(io.open(prefix .. f), "missing " .. f)
    end
    out, err, status = run_installed(prefix .. "/bin/b24 crm.lead.contact.items.get id=1")
    assert.equal(0, status, err)
    assert.matches('"CONTACT_ID":1010', out, 1, true)
  end)

  it("the rockspec names every Lua module of the source tree, under its module name", function()
    local f = assert(io.open(support.ROOT .. "/bitrix24-scm-1.rockspec", "rb"))
    local rockspec = f:read("*a")
    f:close()
    local files = support.run("cd '" .. support.ROOT .. "' && find lua -name '*.lua' | sort")
    local n = 0
    for file in files:gmatch("[^\n]+") do
      local module = file:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/", ".")
      assert.is_truthy(rockspec:find('["' .. module .. '"] = "' .. file .. '"', 1, true), "not in the rockspec: " .. file)
      n = n + 1
    end
    assert.is_true(n > 20, "found only " .. n .. " modules")
  end)

  it("the rockspec builds every C source of src/", function()
    local f = assert(io.open(support.ROOT .. "/bitrix24-scm-1.rockspec", "rb"))
    local rockspec = f:read("*a")
    f:close()
    local files = support.run("cd '" .. support.ROOT .. "' && ls src/*.c")
    local n = 0
    for file in files:gmatch("[^\n]+") do
      assert.is_truthy(rockspec:find('"' .. file .. '"', 1, true), "not in the rockspec's sources: " .. file)
      n = n + 1
    end
    assert.is_true(n > 8, "found only " .. n .. " C files")
  end)

  it("luarocks make builds and installs the rock into a tree", function()
    if support.LUA_VERSION == "luajit" then return end
    local src = tmp .. "/src"
    local tree = tmp .. "/tree"
    local _, err, status = support.run("mkdir -p " .. src .. " && cd '" .. support.ROOT
      .. "' && cp -r bitrix24-scm-1.rockspec src lua bin " .. src)
    assert.equal(0, status, err)
    local out
    out, err, status = support.run("cd " .. src .. " && luarocks --lua-version=" .. support.LUA_VERSION
      .. " --tree=" .. tree .. " make --deps-mode=none bitrix24-scm-1.rockspec")
    assert.equal(0, status, out .. err)
    out, err, status = run_installed(support.LUA .. " -e 'package.path = \"" .. tree .. "/share/lua/"
      .. support.LUA_VERSION .. "/?.lua;\" .. package.path; package.cpath = \"" .. tree .. "/lib/lua/"
      .. support.LUA_VERSION .. "/?.so;\" .. package.cpath; local b = require \"bitrix24\"; "
      .. "local c = b.from_env(); local rows = assert(c:call(\"crm.lead.contact.items.get\", {id = 1})); "
      .. "print(#rows, b._VERSION)'")
    assert.equal(0, status, err)
    assert.matches("^2\t%d+%.%d+", out)
  end)
end)
