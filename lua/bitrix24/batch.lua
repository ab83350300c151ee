-- Batch: many calls in few requests.
--
-- plan() checks and encodes the commands before anything is sent (a bad
-- command gives nil and why, which the client raises: no part of the
-- batch goes out), orders them so a
-- $result[key] reference comes after the command it names, and splits
-- them into requests of at most 50 commands. run() sends the requests
-- and unpacks the answers. A reference never crosses requests, so the
-- requests are independent and may be in flight together (except with
-- halt: a failed command must stop the requests after it).

local core = require "bitrix24.core"
local cjson = require "cjson"
local errors = require "bitrix24.errors"
local methods = require "bitrix24.methods"
local fail = errors.message
local pipeline = require "bitrix24.pipeline"
local fanout = require "bitrix24.fanout"

local json = cjson.new()

local M = { MAX_COMMANDS = 50 }

local REFERENCE = "%$%a+%[([%w_]+)%]"

-- Keys of digits sort as numbers (lead ids), the rest as strings, digits first.
local function key_less(a, b)
  local na, nb = a:match("^%d+$") and tonumber(a), b:match("^%d+$") and tonumber(b)
  if na and nb then return na < nb end
  if na or nb then return na ~= nil end
  return a < b
end

-- Commands in key order, each after the commands it refers to; or nil
-- and why when two refer to each other.
local function order(cmd, deps)
  local keys = {}
  for key in pairs(cmd) do keys[#keys + 1] = key end
  table.sort(keys, key_less)
  local out, state, why = {}, {}, nil
  local function visit(key, from)
    if why or state[key] == "done" then return end
    if state[key] == "visiting" then
      why = fail("batch: commands %s and %s refer to each other", key, from)
      return
    end
    state[key] = "visiting"
    for _, dep in ipairs(deps[key]) do visit(dep, key) end
    state[key] = "done"
    out[#out + 1] = key
  end
  for _, key in ipairs(keys) do visit(key) end
  if why then return nil, why end
  return out
end

local function chunks_of(ordered, deps)
  local chunks, where = {}, {}
  for i, key in ipairs(ordered) do
    local n = math.floor((i - 1) / M.MAX_COMMANDS) + 1
    chunks[n] = chunks[n] or {}
    table.insert(chunks[n], key)
    where[key] = n
    for _, dep in ipairs(deps[key]) do
      if where[dep] ~= n then
        return nil, fail("batch: %s refers to %s, which goes in an earlier request of %d commands; "
          .. "keep referring commands within %d of each other", key, dep, M.MAX_COMMANDS, M.MAX_COMMANDS)
      end
    end
  end
  return chunks
end

local function check_opts(opts)
  if opts == nil then return {} end
  if type(opts) ~= "table" then return nil, fail("batch: opts must be a table, got %s", type(opts)) end
  if opts.progress ~= nil and type(opts.progress) ~= "function" then
    return nil, fail("batch: opts.progress must be a function")
  end
  local bad = fanout.check(opts.parallel, "batch: ")
  if bad then return nil, bad end
  return opts
end

-- Returns the plan, or nil and why.
function M.plan(commands, opts)
  local why
  opts, why = check_opts(opts)
  if not opts then return nil, why end
  if type(commands) ~= "table" or next(commands) == nil then
    return nil, fail( "batch: commands must be a non-empty table of key = { method, params }")
  end
  local cmd, names, deps = {}, {}, {}
  for key, c in pairs(commands) do
    if type(key) ~= "string" or not key:match("^[%w_]+$") then
      return nil, fail("batch: command keys must be strings of letters, digits and '_', got %s",
        type(key) == "string" and string.format("%q", key) or tostring(key))
    end
    if type(c) ~= "table" then
      return nil, fail("batch: commands.%s must be a table { method, params }", key)
    end
    local method, params = c[1] or c.method, c[2] or c.params
    local lower
    lower, why = methods.check_name(method)
    if not lower then return nil, why end
    if lower == "batch" then
      return nil, fail( "batch: commands.%s: a batch cannot contain a batch", key)
    end
    if params == nil then params = {} end
    if type(params) ~= "table" then
      return nil, fail("batch: commands.%s: params must be a table or nil, got %s", key, type(params))
    end
    params, why = methods.validate(method, params, true)
    if not params then return nil, why end
    local ok, query = pcall(core.query, params)
    if not ok then
      return nil, fail( "batch: commands.%s (%s): %s", key, method, (tostring(query):gsub("^.-: ", "")))
    end
    cmd[key] = query == "" and method or method .. "?" .. query
    names[key] = method
  end
  for key, text in pairs(cmd) do
    deps[key] = {}
    for ref in text:gmatch(REFERENCE) do
      if not cmd[ref] then
        return nil, fail("batch: commands.%s refers to $result[%s], which is not a command", key, ref)
      end
      if ref ~= key then table.insert(deps[key], ref) end
    end
  end
  local ordered, chunks
  ordered, why = order(cmd, deps)
  if ordered then chunks, why = chunks_of(ordered, deps) end
  if not chunks then return nil, why end
  local reads_only = true
  for _, method in pairs(names) do reads_only = reads_only and pipeline.is_read(method) end
  return {
    reads_only = reads_only,
    cmd = cmd, methods = names, chunks = chunks,
    total = #ordered, halt = opts.halt and true or false, progress = opts.progress, parallel = opts.parallel,
  }
end

-- One request's body: the commands under `keys`, in that order, which a
-- Lua table would not keep, so it is written by hand. cmd: key -> command.
function M.body(keys, cmd, halt)
  local parts = {}
  for i, key in ipairs(keys) do
    parts[i] = json.encode(key) .. ":" .. json.encode(cmd[key])
  end
  return '{"halt":' .. (halt and 1 or 0) .. ',"cmd":{' .. table.concat(parts, ",") .. "}}"
end

local function body_of(plan, chunk)
  return M.body(chunk, plan.cmd, plan.halt)
end

-- The answer's maps arrive as {} or [] when empty and as arrays when the
-- keys were 0..n-1 (PHP's json_encode): make them all key -> value.
local function as_map(t)
  if type(t) ~= "table" then return {} end
  if t[1] == nil then return t end
  local m = {}
  for i, v in ipairs(t) do m[tostring(i - 1)] = v end
  return m
end
M.as_map = as_map

-- What one request's answer holds, into results. Returns nil, or the
-- error that ends the batch; failed: a command of it failed.
local function unpack_answer(plan, chunk, env, results, make_error)
  if type(env.result) ~= "table" then
    return make_error("BAD_RESPONSE", "the batch answer has no result map", "batch")
  end
  local r = env.result
  local res, errs = as_map(r.result), as_map(r.result_error)
  local totals, nexts, times = as_map(r.result_total), as_map(r.result_next), as_map(r.result_time)
  local failed, missing = false, {}
  for _, key in ipairs(chunk) do
    local e = errs[key]
    if res[key] == nil and e == nil then missing[#missing + 1] = key end
    if res[key] ~= nil or e ~= nil then
      local item = { result = res[key], total = totals[key], next = nexts[key], time = times[key] }
      if e ~= nil then
        failed = true
        local code = type(e) == "table" and e.error or ""
        local description = type(e) == "table" and e.error_description or ""
        item.error = make_error(type(code) == "string" and code or tostring(code),
          type(description) == "string" and description or "", plan.methods[key])
      end
      results[key] = item
    end
  end
  -- Every command sent comes back as a result or an error, except those
  -- a halted batch never ran (after its failed command): a command that
  -- silently vanished would look like one that found nothing.
  if #missing > 0 and not (plan.halt and failed) then
    local err = make_error("BAD_RESPONSE", "the batch answer has neither a result nor an error for "
      .. table.concat(missing, ", "), "batch")
    err.missing = missing
    return err
  end
  return nil, failed
end

-- send_all(bodies, on_each) sends the requests' bodies, calling
-- on_each(i, envelope, err) in their order (false stops the rest);
-- make_error(code, description, method). After a failed request, the
-- results of the requests before it are in err.partial.
function M.run(plan, send_all, make_error)
  local results, done, failure = {}, 0, nil
  local bodies = {}
  for i, chunk in ipairs(plan.chunks) do bodies[i] = body_of(plan, chunk) end
  send_all(bodies, function(i, env, err)
    local chunk, failed = plan.chunks[i], false
    if env then err, failed = unpack_answer(plan, chunk, env, results, make_error) end
    if err then
      failure = err
      return false
    end
    done = done + #chunk
    if plan.progress then plan.progress(done, plan.total) end
    if plan.halt and failed then return false end
  end)
  if failure then
    failure.partial = results
    return nil, failure
  end
  return results
end

-- The contacts of many leads: one items.get per lead, 50 to a request.
-- Returns the plan (false for no ids: nothing to send) and the caller's
-- id of each command key, or nil and why.
function M.plan_lead_contacts(ids, opts)
  if type(ids) ~= "table" then
    return nil, fail( "lead_contacts: ids must be an array of lead ids, got %s", type(ids))
  end
  local commands, keys = {}, {}
  for i = 1, #ids do
    local id = ids[i]
    local n = type(id) == "string" and id:match("^%d+$") and tonumber(id) or id
    if type(n) ~= "number" or n <= 0 or n ~= math.floor(n) or n >= 2^53 then
      return nil, fail("lead_contacts: ids[%d] must be a positive integer, got %s", i, tostring(id))
    end
    local key = string.format("%d", n)
    if not keys[key] then
      keys[key] = id
      commands[key] = { "crm.lead.contact.items.get", { id = n } }
    end
  end
  for k in pairs(ids) do
    if type(k) ~= "number" or k < 1 or k > #ids or k ~= math.floor(k) then
      return nil, fail("lead_contacts: ids must be an array (keys 1..n)")
    end
  end
  if #ids == 0 then return false, keys end
  local plan, why = M.plan(commands, opts)
  if not plan then return nil, why end
  return plan, keys
end

-- results keyed by command -> rows and errors keyed by the caller's ids.
-- After a failed request, what was fetched before it is kept in
-- err.partial = { rows = ..., errors = ... }.
function M.by_lead(keys, results, err)
  local rows, errs = {}, {}
  for key, item in pairs(results or err.partial or {}) do
    local id = keys[key]
    if item.error then errs[id] = item.error else rows[id] = item.result end
  end
  if err then
    err.partial = { rows = rows, errors = errs }
    return nil, err
  end
  return rows, errs
end

return M
