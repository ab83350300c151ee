-- batch of the fake portal (FACTS §6): up to 50 sub-calls run in order, each
-- able to refer to the answers of earlier ones with $result[...] and its
-- kin (FACTS §6, §11 [src]).

local json = require "bitrix24.fake.json"
local php = require "bitrix24.fake.php"
local answers = require "bitrix24.fake.answers"
local Limits = require "bitrix24.fake.limits"

local omap, set, php_pairs, php_key = json.omap, json.set, json.php_pairs, json.php_key
local obj, fail, error_body = answers.obj, answers.fail, answers.error_body

local BATCH_SIZE = 50

local batch = {}

-- References to earlier sub-calls (FACTS §6, §11 [src]). The server first
-- parses the command's query with PHP rules, then looks for references in
-- each decoded value: "$" and one of these names (case-insensitive, the
-- first that fits, so "$results[a]" is "result" + "s[a]"), then everything
-- up to the next blank. Every "[segment]" in that text is a step of the path.
-- Keys are left alone: a decoded key can never hold a whole "[...]" pair.
local REF_NAMES = { "result", "next", "total", "time", "error" }
local REF_MAPS = { result = "result", error = "result_error", time = "result_time",
  next = "result_next", total = "result_total" }

-- PHP isset($value[$seg]) followed by the read: nil when the step fails.
-- A string can be indexed by a character offset, as in PHP.
local function ref_step(value, seg)
  local k = php_key(seg)
  if type(value) == "string" then
    if type(k) ~= "number" then return nil end
    if k < 0 then k = #value + k end
    if k < 0 or k >= #value then return nil end
    return value:sub(k + 1, k + 1)
  end
  if type(value) ~= "table" then return nil end
  local v
  if json.is_omap(value) then
    v = value[seg]
    if v == nil then v = value[k] end
  elseif type(k) == "number" then
    v = value[k + 1] -- a Lua sequence is a PHP list 0..n-1
  end
  if v == json.null then return nil end
  return v
end

-- A copy, so that a parameter taken from the results does not change when
-- later sub-calls add to them (PHP copies arrays on assignment).
local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local c = json.is_omap(v) and omap() or {}
  for _, k in ipairs((json.keys(v))) do set(c, k, deep_copy(v[k])) end
  return c
end

-- PHP str_replace: every occurrence of `from`, left to right.
local function replace_all(s, from, to)
  local out, pos = {}, 1
  while true do
    local a, b = s:find(from, pos, true)
    if not a then break end
    out[#out + 1] = s:sub(pos, a - 1)
    out[#out + 1] = to
    pos = b + 1
  end
  out[#out + 1] = s:sub(pos)
  return table.concat(out)
end

-- The references found in one decoded value: { text, name, path segments }.
local function find_refs(s)
  local refs, pos = {}, 1
  while true do
    local s1 = s:find("$", pos, true)
    if not s1 then break end
    local name
    for _, n in ipairs(REF_NAMES) do
      if s:sub(s1 + 1, s1 + #n):lower() == n then name = s:sub(s1 + 1, s1 + #n) break end
    end
    if not name then
      pos = s1 + 1
    else
      local path = s:match("^[^%s]*", s1 + 1 + #name)
      local segs = {}
      for seg in path:gmatch("%[([^%]]+)%]") do segs[#segs + 1] = seg end
      refs[#refs + 1] = { text = s:sub(s1, s1 + #name + #path), name = name, segs = segs }
      pos = s1 + 1 + #name + #path
    end
  end
  return refs
end

-- Resolve the references in one value. The walk stops at the first step that
-- fails and keeps what it reached: a command that has not run (failed, later,
-- unknown) leaves the whole map of that kind. A reference that is the whole
-- value becomes that value as it is (an array stays an array); inside a
-- longer string only a string or a number is put in, otherwise the text stays.
local function resolve_value(value, maps)
  for _, ref in ipairs(find_refs(value)) do
    if type(value) ~= "string" then break end
    if #ref.segs > 0 then
      -- The map is looked up by the name as written: "$RESULT[...]" finds none.
      local r = REF_MAPS[ref.name] and maps[REF_MAPS[ref.name]]
      for _, seg in ipairs(ref.segs) do
        local nxt = ref_step(r, seg)
        if nxt == nil then break end
        r = nxt
      end
      if ref.text == value then
        value = r == nil and json.null or deep_copy(r)
      else
        if type(r) == "number" then r = php.number_text(r) end
        if type(r) == "string" then
          value = replace_all(value, ref.text, r)
        end
      end
    end
  end
  return value
end

-- Every value of a parsed command query, at any depth.
local function resolve_refs(params, maps)
  local out = omap()
  for _, kv in ipairs(php_pairs(params)) do
    local v = kv[2]
    if type(v) == "table" then
      v = resolve_refs(v, maps)
    elseif type(v) == "string" then
      v = resolve_value(v, maps)
    end
    set(out, kv[1], v)
  end
  return out
end

-- "crm.lead.list.json" and "CRM.Lead.List" both name crm.lead.list.
function batch.method_name(s)
  return (s:lower():gsub("%.json$", ""))
end
local method_name = batch.method_name

-- Sub-calls run in order with the batch's auth. The batch counts once for the
-- leaky bucket (already done by the caller) and is not charged operating time
-- itself; every sub-call is charged to its own method (portal:call). The
-- sub-calls are logged under "calls" of the batch's log `entry`. Returns the
-- body of the answer and the seconds of real work the sub-calls took.
function batch.run(portal, params, start, entry)
  local maps = { result = omap(), result_error = omap(), result_total = omap(),
    result_next = omap(), result_time = omap() }
  local halt, now, n, processing, last_op, work = php.truthy(params.halt), start, 0, 0, nil, 0
  local calls = {}
  for _, kv in ipairs(php_pairs(params.cmd)) do
    local key, cmd = kv[1], kv[2]
    -- Every command counts towards the 50, a skipped one too; past the 50th
    -- even a non-string gets the error (the server counts before it looks).
    n = n + 1
    if n > BATCH_SIZE or type(cmd) == "string" then -- non-strings are skipped (FACTS §6 [src])
      local out, method, sub_params
      if n > BATCH_SIZE then
        out = fail(400, "ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")
      else
        local path, query = cmd:match("^([^?]*)%??(.*)$")
        method = method_name(path)
        sub_params = resolve_refs(php.parse_form(query), maps)
        if method == "batch" then
          out = fail(405, "ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage")
        else
          out = portal:call(method, sub_params, now)
          work = work + (out.work or 0)
          if out.finish then
            processing = processing + (out.finish - now)
            now = out.finish
          end
        end
      end
      calls[#calls + 1] = obj("key", key, "method", method, "params", sub_params, "error", out.error)
      if out.failed then
        set(maps.result_error, key, error_body(out.error, out.error_description))
      else
        set(maps.result, key, out.result)
        set(maps.result_total, key, out.total)
        set(maps.result_next, key, out.next)
        set(maps.result_time, key, out.time)
        last_op = out.time.operating
      end
      if out.failed and halt then break end
    end
  end
  set(entry, "calls", calls)
  local finish = Limits.finish_time(start, processing, math.max(portal.clock(), now))
  local result = obj("result", maps.result, "result_error", maps.result_error,
    "result_total", maps.result_total, "result_next", maps.result_next, "result_time", maps.result_time)
  -- Outer time block: like the real samples, `operating` mirrors the last
  -- successful sub-call (0 and no reset time when none succeeded).
  return obj("result", result, "time", Limits.time_block(start, finish, processing, last_op,
    portal.limits:window())), work
end

return batch

