-- make doc-check: the API reference leaves nothing public out.
--
-- Public: in the files config.ld gives LDoc, every `function T.name`,
-- `function T:name` and re-exported `T.name = module.name` whose name does
-- not start with "_" (those are metamethods and internals). Each needs a doc
-- comment: the comment block right above it starts with "---" (LDoc's
-- mark). A documented table (a block with @table right above
-- `local X = {` or `X = {`) documents each of its keys with @field or
-- @tfield. Last, LDoc itself must build the reference without a warning.
--
-- Prints what is missing, then "doc: N passed, N failed" (one count per
-- function, per documented table and for the LDoc run). Run from the
-- repository root: lua spec/doc-check.lua [ldoc command]

local ldoc = arg[1] or "lua5.1 /usr/bin/ldoc"

local function read_lines(path)
  local lines = {}
  for line in assert(io.open(path)):lines() do lines[#lines + 1] = line end
  return lines
end

-- The files LDoc reads: config.ld is Lua, run with an empty environment.
local function config_files()
  local env = {}
  local chunk = assert(loadfile("config.ld"))
  if setfenv then setfenv(chunk, env) else chunk = assert(loadfile("config.ld", "t", env)) end
  chunk()
  return env.file
end

-- The comment block ending at line i (inclusive), as a list; empty when
-- line i is not a comment.
local function comment_above(lines, i)
  local block = {}
  while i >= 1 and lines[i]:match("^%s*%-%-") do
    table.insert(block, 1, lines[i])
    i = i - 1
  end
  return block
end

local function public_name(line)
  local t, sep, name = line:match("^function%s+([%w_]+)([.:])([%w_]+)%s*%(")
  if not t then
    t, name = line:match("^([%w_]+)%.([%w_]+)%s*=%s*[%w_]+%.[%w_.]+%s*$")
    sep = "."
  end
  if t and name:sub(1, 1) ~= "_" then return t .. sep .. name end
end

-- The keys of the table constructor starting at line i, up to the line
-- that closes it (a "}" at the constructor's own indentation).
local function table_keys(lines, i)
  local indent = lines[i]:match("^(%s*)")
  local keys = {}
  for j = i + 1, #lines do
    if lines[j]:match("^" .. indent .. "}") then break end
    for key in lines[j]:gmatch("([%a_][%w_]*)%s*=%s*[^=]") do keys[#keys + 1] = key end
  end
  return keys
end

local passed, failed = 0, 0
local function check(ok, where, what)
  if ok then
    passed = passed + 1
  else
    failed = failed + 1
    print(where .. ": " .. what)
  end
end

for _, path in ipairs(config_files()) do
  local lines = read_lines(path)
  for i, line in ipairs(lines) do
    local name = public_name(line)
    if name then
      local block = comment_above(lines, i - 1)
      check(block[1] and block[1]:match("^%s*%-%-%-") ~= nil, path .. ":" .. i, name .. " has no doc comment (---)")
    end
    if line:match("^%s*local%s+[%w_]+%s*=%s*{%s*$") or line:match("^%s*[%w_]+%s*=%s*{%s*$") then
      local block = comment_above(lines, i - 1)
      local doc = table.concat(block, "\n")
      if block[1] and block[1]:match("^%s*%-%-%-") and doc:match("@table") then
        local missing = {}
        for _, key in ipairs(table_keys(lines, i)) do
          local k = key:gsub("%p", "%%%0")
          if not (doc:match("@tfield%S*%s+%S+%s+" .. k .. "%f[^%w_]") or doc:match("@field%S*%s+" .. k .. "%f[^%w_]")) then
            missing[#missing + 1] = key
          end
        end
        check(#missing == 0, path .. ":" .. i, "the documented table does not document " .. table.concat(missing, ", "))
      end
    end
  end
end

-- LDoc with every warning fatal, into a directory of its own.
local out = os.tmpname()
os.remove(out)
local ok = os.execute(ldoc .. " --fatalwarnings --dir " .. out .. " . > " .. out .. ".log 2>&1")
local log = io.open(out .. ".log"):read("*a")
os.execute("rm -rf " .. out .. " " .. out .. ".log")
check(ok == true or ok == 0, "ldoc", "LDoc failed or warned:\n" .. log)

print(("doc: %d passed, %d failed"):format(passed, failed))
os.exit(failed == 0 and 0 or 1)
