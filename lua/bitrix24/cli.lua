-- The b24 command: call one REST method from the shell.
--
--   b24 METHOD [key=value ...] [--json JSON|@FILE|-] [--time]
--   b24 LIST_METHOD --all [--fast] [--limit N] [key=value ...]
--
-- key=value pairs use Bitrix24's PHP-style keys (fields[CONTACT_ID]=5,
-- items[0][SORT]=10); values made only of digits are sent as integers.
-- The result is printed as JSON on stdout; an error goes to stderr and
-- the exit status is 1 (2 for a usage error).

local bitrix24 = require "bitrix24"
local core = require "bitrix24.core"
local errors = require "bitrix24.errors"

-- Output goes through the core's encoder (core.json_encode): the product
-- never loads the fake portal's modules. Objects print with their keys
-- sorted, so the same answer prints the same way every time; an empty table
-- prints as [], as Bitrix24 (PHP) writes an empty list.
local json = {}

-- Keys exactly 1..n: a JSON array.
local function is_array(t)
  local n, max = 0, 0
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k % 1 ~= 0 then return false end
    n, max = n + 1, math.max(max, k)
  end
  return n == max
end

function json.encode(v)
  if type(v) ~= "table" then return core.json_encode(v) end
  if next(v) == nil then return "[]" end
  local out = {}
  if is_array(v) then
    for i = 1, #v do out[i] = json.encode(v[i]) end
    return "[" .. table.concat(out, ",") .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = type(k) == "number" and core.json_encode(k) or k end
  table.sort(keys)
  for i, k in ipairs(keys) do
    local value = v[k]
    if value == nil then value = v[tonumber(k)] end
    out[i] = core.json_encode(k) .. ":" .. json.encode(value)
  end
  return "{" .. table.concat(out, ",") .. "}"
end

local M = {}

local USAGE = [[
usage: b24 METHOD [key=value ...] [--json JSON|@FILE|-] [--time]
       b24 LIST_METHOD --all [--fast] [--limit N] [--parallel N] [--page-batch N] [key=value ...]
       b24 --batch FILE|- [--halt]
       b24 --lead-contacts ID[,ID...]|-

Calls a Bitrix24 REST method and prints its result as JSON.
Credentials come from BITRIX24_WEBHOOK_URL (or the BITRIX24_OAUTH_* variables).
  key=value         a parameter; PHP-style keys: fields[CONTACT_ID]=5, items[0][SORT]=10
  --json JSON       parameters as a JSON object; @FILE reads a file, - reads stdin
  --time            print the answer's time block to stderr
  --all             every row of a list method (crm.lead.list, ...), one JSON
                    object a line as the rows arrive, 2,500 rows a request
  --fast            with --all: by ID ascending without counting (the quickest
                    way through a large table; params.order must not say otherwise)
  --limit N         with --all: stop after N rows
  --parallel N      with --all: N requests' worth of rows fetched at once
  --page-batch N    with --all: list calls per request, 1 to 50 (default 50)
  --batch FILE      run the commands in FILE (- for stdin), a JSON object
                    {"key": ["method", {params}], ...}, 50 to a request; prints
                    {"key": {"result": ..., "error": ..., "total": ..., "next": ...}}
  --halt            with --batch: stop at the first failing command
  --lead-contacts   the contacts of many leads (ids separated by commas or spaces,
                    - reads them from stdin), 50 leads to a request; prints
                    {"lead id": [rows], ...}, a lead's error on stderr
A progress bar goes to stderr when it is a terminal. Exit status: 0 on success,
1 when the portal or the network failed (or any command or lead did), 2 on a
usage error (nothing is sent then).
example: b24 crm.lead.contact.items.get id=1
]]

local function integer_or_string(v)
  if v:match("^%-?%d+$") and #v <= 15 then
    return math.tointeger and math.tointeger(tonumber(v)) or tonumber(v)
  end
  return v
end

-- "fields[CONTACT_ID]" -> { "fields", "CONTACT_ID" }; numeric parts index
-- arrays, 0-based as in Bitrix24's own examples.
local function set_param(params, key, value)
  local name, rest = key:match("^([^%[%]]+)(.*)$")
  if not name then return nil, "bad parameter name: " .. key end
  local path = { name }
  for part in rest:gmatch("%[([^%[%]]*)%]") do path[#path + 1] = part end
  if rest:gsub("%[[^%[%]]*%]", "") ~= "" then return nil, "bad parameter name: " .. key end
  local t = params
  for i = 1, #path do
    local k = path[i]
    if i > 1 and k:match("^%d+$") then k = tonumber(k) + 1 end
    if k == "" then k = #t + 1 end
    if i == #path then
      t[k] = integer_or_string(value)
    else
      if type(t[k]) ~= "table" then t[k] = {} end
      t = t[k]
    end
  end
  return true
end

local function read_json(spec)
  local text
  if spec == "-" then
    text = io.read("*a")
  elseif spec:sub(1, 1) == "@" then
    local f, err = io.open(spec:sub(2), "rb")
    if not f then return nil, err end
    text = f:read("*a")
    f:close()
  else
    text = spec
  end
  local v, err = core.json_decode(text)
  if type(v) ~= "table" then return nil, "--json: not a JSON object: " .. tostring(err) end
  return v
end

local function is_terminal(fd)
  local a, _, c = os.execute("test -t " .. fd)
  if type(a) == "number" then return a == 0 end
  return a == true and (c == nil or c == 0)
end

-- "\r[#########           ] 1200/2000 leads" on a terminal, nothing elsewhere.
local function progress_bar(errout, what)
  if not is_terminal(2) then return nil end
  return function(done, total)
    local width = 30
    local filled = total and total > 0 and math.floor(width * done / total) or 0
    errout:write(string.format("\r[%s%s] %d/%s %s", ("#"):rep(filled), (" "):rep(width - filled),
      done, total and tostring(total) or "?", what))
    if total and done >= total then errout:write("\n") end
    errout:flush()
  end
end

local function error_json(err)
  if not err then return nil end
  return { code = err.code, description = err.description }
end

local function read_text(spec)
  if spec == "-" then return io.read("*a") end
  local f, err = io.open(spec, "rb")
  if not f then return nil, err end
  local text = f:read("*a")
  f:close()
  return text
end

local function run_batch(client, file, halt, out, errout)
  local text, err = read_text(file)
  if not text then errout:write("b24: ", err, "\n"); return 2 end
  local commands = core.json_decode(text)
  if type(commands) ~= "table" then errout:write("b24: --batch: not a JSON object\n"); return 2 end
  local results
  results, err = client:batch(commands, { halt = halt, progress = progress_bar(errout, "commands") })
  if not results then
    errout:write(tostring(err), "\n")
    return 1
  end
  local printed, failed = {}, false
  for key, item in pairs(results) do
    printed[key] = { result = item.result, error = error_json(item.error), total = item.total, next = item.next }
    failed = failed or item.error ~= nil
  end
  out:write(json.encode(printed), "\n")
  return failed and 1 or 0
end

local function run_lead_contacts(client, spec, out, errout)
  local text = spec
  if spec == "-" then text = io.read("*a") end
  local ids = {}
  for id in text:gmatch("[^%s,]+") do ids[#ids + 1] = id end
  if #ids == 0 then errout:write("b24: --lead-contacts: no lead ids\n"); return 2 end
  local rows, errs = client:lead_contacts(ids, { progress = progress_bar(errout, "leads") })
  if not rows then
    errout:write(tostring(errs), "\n")
    return 1
  end
  local printed, failed = {}, false
  for id, r in pairs(rows) do printed[tostring(id)] = r end
  for id, e in pairs(errs) do
    errout:write("lead ", tostring(id), ": ", tostring(e), "\n")
    failed = true
  end
  out:write(json.encode(printed), "\n")
  return failed and 1 or 0
end

-- Every row of a list method, one JSON line each as it arrives. Rows are
-- flushed at every page, so a reader sees them while the export runs.
local function run_all(client, method, params, export, out, errout)
  local bar = progress_bar(errout, "rows")
  local opts = { fast = export.fast, parallel = export.parallel, page_batch = export.page_batch }
  if export.limit and not opts.page_batch then
    -- No more pages a request than the rows asked for need.
    opts.page_batch = math.max(1, math.min(50, math.ceil(export.limit / 50)))
  end
  local drawn, shown_total = false, nil
  opts.progress = function(done, total)
    out:flush()
    if bar then
      drawn, shown_total = true, total
      bar(done, total)
    end
  end
  local n, failed = 0, nil
  if export.limit ~= 0 then
    for row, err in client:each(method, params, opts) do
      if not row then
        failed = err
        break
      end
      out:write(json.encode(row), "\n")
      n = n + 1
      if export.limit and n >= export.limit then break end
    end
  end
  out:flush()
  -- The bar ends its own line once a known total is reached.
  if drawn and not (shown_total and n >= shown_total) then errout:write("\n") end
  if failed then
    errout:write(tostring(failed), "\n")
    return 1
  end
  return 0
end

-- A whole number >= lo given to an option, or nil after saying why.
local function count_value(name, v, lo, errout)
  local n = v and v:match("^%d+$") and tonumber(v)
  if not n or n < lo then
    errout:write("b24: ", name, " needs a whole number", lo > 0 and " from " .. lo or "", "\n")
    return nil
  end
  return n
end

-- Returns the exit status; out/errout are files (io.stdout/io.stderr).
function M.main(args, out, errout)
  out, errout = out or io.stdout, errout or io.stderr
  local method, params, show_time = nil, {}, false
  local batch_file, halt, lead_ids, all, export = nil, nil, nil, false, {}
  local i = 1
  local function value(name)
    i = i + 1
    if not args[i] then errout:write("b24: ", name, " needs a value\n") end
    return args[i]
  end
  while i <= #args do
    local a = args[i]
    if a == "-h" or a == "--help" then
      out:write(USAGE)
      return 0
    elseif a == "--time" then
      show_time = true
    elseif a == "--halt" then
      halt = true
    elseif a == "--all" then
      all = true
    elseif a == "--fast" or a == "--limit" or a == "--parallel" or a == "--page-batch" then
      export.given = a
      if a == "--fast" then
        export.fast = true
      else
        local n = count_value(a, value(a), a == "--limit" and 0 or 1, errout)
        if not n then return 2 end
        export[a == "--limit" and "limit" or a == "--parallel" and "parallel" or "page_batch"] = n
      end
    elseif a == "--batch" then
      batch_file = value(a)
      if not batch_file then return 2 end
    elseif a == "--lead-contacts" then
      lead_ids = value(a)
      if not lead_ids then return 2 end
    elseif a == "--json" then
      local spec = value(a)
      if not spec then return 2 end
      local v, err = read_json(spec)
      if not v then errout:write("b24: ", err, "\n"); return 2 end
      for k, val in pairs(v) do params[k] = val end
    elseif a:sub(1, 1) == "-" and a ~= "-" then
      errout:write("b24: unknown option ", a, "\n", USAGE)
      return 2
    elseif not method then
      method = a
    else
      local key, val = a:match("^([^=]+)=(.*)$")
      if not key then errout:write("b24: expected key=value, got ", a, "\n"); return 2 end
      local ok, err = set_param(params, key, val)
      if not ok then errout:write("b24: ", err, "\n"); return 2 end
    end
    i = i + 1
  end
  local jobs = (method and 1 or 0) + (batch_file and 1 or 0) + (lead_ids and 1 or 0)
  if jobs ~= 1 then errout:write(USAGE); return 2 end
  if all and not method then errout:write("b24: --all needs a list method\n", USAGE); return 2 end
  if export.given and not all then errout:write("b24: ", export.given, " goes with --all\n"); return 2 end
  if (export.page_batch or 0) > 50 then errout:write("b24: --page-batch is at most 50\n"); return 2 end

  -- A malformed URL in the environment is a usage error (exit 2), said in
  -- one line; the messages of bitrix24.webhook never quote the URL.
  local made, client, err = pcall(bitrix24.from_env)
  if not made then
    local message = tostring(client):gsub("^.-:%d+: ", ""):gsub("^bitrix24: ", "")
    errout:write("b24: ", message, " (in the environment)\n")
    return 2
  end
  if not client then errout:write("b24: ", tostring(err), "\n"); return 2 end
  local ok, status, result, meta
  if batch_file then
    ok, status = pcall(run_batch, client, batch_file, halt, out, errout)
  elseif lead_ids then
    ok, status = pcall(run_lead_contacts, client, lead_ids, out, errout)
  elseif all then
    ok, status = pcall(run_all, client, method, params, export, out, errout)
  else
    ok, result, err, meta = pcall(client.call, client, method, params)
    status = result
  end
  client:close()
  if not ok then
    -- Raised messages do not quote secrets; redacting once more costs nothing.
    local message = errors.redact(tostring(status):gsub("^.-:%d+: ", ""), client._auth.secrets)
    errout:write("b24: ", message, "\n")
    return 2
  end
  if batch_file or lead_ids or all then return status end
  if err then
    errout:write(tostring(err), "\n")
    return 1
  end
  out:write(json.encode(result), "\n")
  if show_time and meta and meta.time then
    errout:write("time: ", json.encode(meta.time), "\n")
  end
  return 0
end

return M
