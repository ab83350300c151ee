-- Out of memory while an answer is decoded is not a broken answer: a read
-- would be retried and a write that ran reported as garbled. The core
-- must raise it as any allocation failure. Run in a child Lua 5.4 whose
-- allocator fails on demand (spec/oom_host.c, compiled here), with the
-- core of build/5.4.

local support = require "support"

local CORE = support.ROOT .. "/build/5.4/bitrix24/core.so"

-- The child: decodes an answer with the n-th allocation failing, for n
-- growing until both decoders get through, and prints one line per
-- outcome kind.
local SCRIPT = [[
package.cpath = %q .. ";" .. package.cpath
local core = require "bitrix24.core"
local rows = {}
for i = 1, 300 do rows[#rows + 1] = '{"ID":"' .. i .. '","TITLE":"' .. ("x"):rep(40) .. '"}' end
local body = '{"result":[' .. table.concat(rows, ",") .. '],"time":{"start":1,"finish":1}}'
local seen = {}
local function note(what) seen[what] = (seen[what] or 0) + 1 end
local n, done = 0, false
while n < 1000000 and not done do
  done = true
  for _, decode in ipairs { core.json_decode, function(s) return core.envelope(200, s) end } do
    fail_after(n)
    local ok, a, b = pcall(decode, body)
    fail_after(-1)
    if not ok then
      note(tostring(a):find("not enough memory", 1, true) and "raised out of memory" or "raised " .. tostring(a))
    elseif a ~= nil then
      note("decoded")
    else
      done = false
      note("failed " .. (type(b) == "table" and tostring(b.code) .. ": " .. tostring(b.description) or tostring(b)))
    end
    if not ok then done = false end
  end
  n = n + 1 + n // 16
end
for what in pairs(seen) do print(what) end
]]

describe("out of memory while decoding an answer", function()
  if support.LUA_VERSION ~= "5.4" then
    pending("runs under Lua 5.4 only (the host links liblua5.4 and loads build/5.4)")
    return
  end
  local dir, host

  setup(function()
    dir = support.tmpdir()
    host = dir .. "/oom_host"
    local _, err, status = support.run("cc -o " .. host .. " " .. support.ROOT .. "/spec/oom_host.c"
      .. " $(pkg-config --cflags --libs lua5.4)")
    assert(status == 0, "cannot build spec/oom_host.c: " .. err)
  end)
  teardown(function() support.remove_dir(dir) end)

  it("raises, never answers BAD_RESPONSE nor nil", function()
    assert(io.open(CORE, "rb"), "build/5.4 is not built (make LUA_VERSION=5.4)"):close()
    support.write_file(dir .. "/decode.lua", SCRIPT:format(support.ROOT .. "/build/5.4/?.so"))
    local out, err, status = support.run(host .. " " .. dir .. "/decode.lua")
    assert.equal(0, status, err)
    local kinds = {}
    for line in out:gmatch("[^\n]+") do kinds[#kinds + 1] = line end
    table.sort(kinds)
    -- Both outcomes show (the allocation counts reach past the decode);
    -- nothing else does.
    assert.same({ "decoded", "raised out of memory" }, kinds)
  end)
end)
