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

  it("make install-client installs the client without the fake portal", function()
    local prefix = tmp .. "/client"
    local out, err, status = support.run("make -C '" .. support.ROOT .. "' -s install-client LUA_VERSION="
      .. support.LUA_VERSION .. " PREFIX=" .. prefix)
    assert.equal(0, status, out .. err)
    assert.is_truthy(io.open(prefix .. "/bin/b24"))
    assert.equal("", support.run("find " .. prefix .. " -path '*fake*'"))
  end)

  local ROCKS = { "scm-1", "0.2.0-1" }

  -- The module lines of a rockspec: module name -> file.
  local function rockspec_modules(name)
    local text = support.read_file(support.ROOT .. "/rockspecs/" .. name)
    local modules = {}
    for module, file in text:gmatch('%["([%w_.]+)"%] = "(lua/[^"]+)"') do modules[module] = file end
    return modules, text
  end

  it("every Lua module is in one rock: the fake portal's in bitrix24-fake, the rest in bitrix24, which never names bitrix24.fake", function()
    local files = support.run("cd '" .. support.ROOT .. "' && find lua -name '*.lua' | sort")
    for _, v in ipairs(ROCKS) do
      local client = rockspec_modules("bitrix24-" .. v .. ".rockspec")
      local fake = rockspec_modules("bitrix24-fake-" .. v .. ".rockspec")
      for _, file in pairs(client) do
        assert.is_nil(support.read_file(support.ROOT .. "/" .. file):find("bitrix24.fake", 1, true),
          file .. " (in the client rock) names the fake portal")
      end
      local n = 0
      for file in files:gmatch("[^\n]+") do
        local module = file:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/", ".")
        local rock = module:match("^bitrix24%.fake%.") and fake or client
        local other = rock == fake and client or fake
        assert.equal(file, rock[module], "not in its rockspec (" .. v .. "): " .. file)
        assert.is_nil(other[module], "in both rockspecs (" .. v .. "): " .. file)
        rock[module] = nil
        n = n + 1
      end
      assert.is_nil(next(client), "bitrix24-" .. v .. " names a missing file")
      assert.is_nil(next(fake), "bitrix24-fake-" .. v .. " names a missing file")
      assert.is_true(n > 20, "found only " .. n .. " modules")
    end
  end)

  it("the client rock's core is built from every C source of src/", function()
    local cmd, err, status = support.run("make -C '" .. support.ROOT .. "' -n rock")
    assert.equal(0, status, err)
    local files = support.run("cd '" .. support.ROOT .. "' && ls src/*.c")
    local n = 0
    for file in files:gmatch("[^\n]+") do
      assert.is_truthy(cmd:find(file, 1, true), "not built by make rock: " .. file)
      n = n + 1
    end
    assert.is_true(n > 8, "found only " .. n .. " C files")
  end)

  it("luarocks lint accepts every rockspec", function()
    for _, name in ipairs { "bitrix24-scm-1", "bitrix24-0.2.0-1", "bitrix24-fake-scm-1", "bitrix24-fake-0.2.0-1" } do
      local out, err, status = support.run("cd '" .. support.ROOT .. "' && luarocks --lua-version=5.4 lint rockspecs/"
        .. name .. ".rockspec")
      assert.equal(0, status, name .. ": " .. out .. err)
    end
  end)

  -- The client rock installed alone, with the source tree, the system's Lua
  -- directories and so luasocket out of reach: only the tree and a copy of
  -- cjson.so. Each rockspec is built by luarocks make from a copy of the
  -- checkout.
  for _, v in ipairs(ROCKS) do
    it("luarocks make of bitrix24-" .. v .. " installs a client that works alone, without luasocket", function()
      if support.LUA_VERSION == "luajit" then return end
      local V = support.LUA_VERSION
      local src, tree, only = tmp .. "/src-" .. v, tmp .. "/tree-" .. v, tmp .. "/cjson-" .. v
      local _, err, status = support.run("mkdir -p " .. src .. " " .. only .. " && cd '" .. support.ROOT
        .. "' && cp -r Makefile rockspecs src lua bin " .. src)
      assert.equal(0, status, err)
      local out
      out, err, status = support.run("cd " .. src .. " && luarocks --lua-version=" .. V .. " --tree=" .. tree
        .. " make --deps-mode=none rockspecs/bitrix24-" .. v .. ".rockspec")
      assert.equal(0, status, out .. err)
      assert.equal("", support.run("find " .. tree .. " -path '*fake*'"), "the client rock installed the fake")
      local cjson = support.run(support.LUA .. [[ -e 'for p in package.cpath:gmatch("[^;]+") do ]]
        .. [[local f = p:gsub("%?", "cjson") if io.open(f) then print(f) break end end']]):gsub("%s+$", "")
      assert.is_true(cjson ~= "", "no cjson.so for " .. V)
      _, err, status = support.run("cp " .. cjson .. " " .. only .. "/")
      assert.equal(0, status, err)
      local suffix = V:gsub("%.", "_")
      local env = "env -u LUA_PATH_" .. suffix .. " -u LUA_CPATH_" .. suffix
        .. " LUA_PATH='" .. tree .. "/share/lua/" .. V .. "/?.lua;" .. tree .. "/share/lua/" .. V .. "/?/init.lua'"
        .. " LUA_CPATH='" .. tree .. "/lib/lua/" .. V .. "/?.so;" .. only .. "/?.so' "
      out, err, status = run_installed(env .. support.LUA .. " -e '"
        .. "assert(not pcall(require, \"socket\"), \"luasocket is reachable\"); "
        .. "local b = require \"bitrix24\"; local core = require \"bitrix24.core\"; "
        .. "local c = b.from_env(); local rows = assert(c:call(\"crm.lead.contact.items.get\", {id = 1})); "
        .. "for name in pairs(package.loaded) do assert(not name:find(\"fake\"), name) end; "
        .. "print(#rows, b._VERSION, core._VERSION)'")
      assert.equal(0, status, err)
      assert.matches("^2\t%d+%.%d+%.%d+\t", out)
      out, err, status = run_installed(env .. tree .. "/bin/b24 crm.lead.contact.items.get id=1")
      assert.equal(0, status, err)
      assert.matches('"CONTACT_ID":1010', out, 1, true)
    end)
  end

  it("luarocks make of bitrix24-fake-0.2.0-1 beside the client: b24-fake-portal serves from the tree", function()
    if support.LUA_VERSION == "luajit" then return end
    local V = support.LUA_VERSION
    local src, tree = tmp .. "/src-fake", tmp .. "/tree-fake"
    local _, err, status = support.run("mkdir -p " .. src .. " && cd '" .. support.ROOT
      .. "' && cp -r Makefile rockspecs src lua bin " .. src)
    assert.equal(0, status, err)
    local out
    for _, name in ipairs { "bitrix24-0.2.0-1", "bitrix24-fake-0.2.0-1" } do
      out, err, status = support.run("cd " .. src .. " && luarocks --lua-version=" .. V .. " --tree=" .. tree
        .. " make --deps-mode=none rockspecs/" .. name .. ".rockspec")
      assert.equal(0, status, name .. ": " .. out .. err)
    end
    assert.is_truthy(io.open(tree .. "/share/lua/" .. V .. "/bitrix24/fake/server.lua"))
    -- The portal prints its webhook URL first; the tree's b24 asks it.
    local script = tmp .. "/fake-portal.sh"
    local f = assert(io.open(script, "w"))
    -- (a tree of one's own is on the paths only through luarocks path)
    f:write("eval \"$(luarocks --lua-version=" .. V .. " --tree=" .. tree .. " path)\"\n")
    f:write("url=" .. tmp .. "/fake-url\n", tree, "/bin/b24-fake-portal --no-tls --timeout 20 > $url &\n", [[
pid=$!
i=0
while [ ! -s $url ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
BITRIX24_WEBHOOK_URL=$(head -n 1 $url) ]], tree, [[/bin/b24 crm.lead.contact.items.get id=1
rc=$?
kill $pid
wait $pid
exit $rc
]])
    f:close()
    out, err, status = run_installed("sh " .. script)
    assert.equal(0, status, err)
    assert.matches('"CONTACT_ID":1010', out, 1, true)
  end)

  -- Debian's busted is no rock, and luarocks test wants busted as one:
  -- spec/luarocks-busted (what make luarocks-test uses) makes it one in a
  -- tree, which --project-tree shows luarocks test.
  it("luarocks test runs the specs with the rockspec's test section", function()
    if support.LUA_VERSION == "luajit" then return end
    local V = support.LUA_VERSION
    local tree = tmp .. "/busted-tree"
    local out, err, status = support.run("sh '" .. support.ROOT .. "/spec/luarocks-busted' " .. V .. " " .. tree)
    assert.equal(0, status, out .. err)
    out, err, status = support.run("cd '" .. support.ROOT .. "' && luarocks --lua-version=" .. V .. " --project-tree=" .. tree
      .. " test rockspecs/bitrix24-0.2.0-1.rockspec -- -o TAP spec/methods_spec.lua")
    assert.equal(0, status, out .. err)
    assert.matches("\nok 1 ", "\n" .. out)
    assert.not_matches("not ok", out)
  end)
end)
