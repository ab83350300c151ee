-- Injected faults of the fake portal: registered through /_fake/fault,
-- matched by method name or pattern, and either replacing a call's answer
-- (html502, error500, error200, canned, redirect, reset) or letting the call
-- run and damaging its answer afterwards (latency, truncate, malformed).

local answers = require "bitrix24.fake.answers"
local php = require "bitrix24.fake.php"

local json_response, error_body = answers.json_response, answers.error_body

local NGINX_502 = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
  .. "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"

local KINDS = {
  latency = true, html502 = true, truncate = true, malformed = true, reset = true,
  error500 = true, error200 = true, redirect = true, canned = true,
}

local Faults = {}
Faults.__index = Faults

function Faults.new()
  return setmetatable({ list = {} }, Faults)
end

-- Register a fault. Without `method` and `pattern` it matches every method.
-- Returns how many faults are registered.
function Faults:add(spec)
  if type(spec) ~= "table" or not KINDS[spec.kind] then
    error("fault: unknown kind " .. tostring(spec and spec.kind), 0)
  end
  local f = {}
  for k, v in pairs(spec) do f[k] = v end
  if type(f.method) == "string" then f.method = f.method:lower() end
  if f.pattern ~= nil then
    if type(f.pattern) ~= "string" or not pcall(string.find, "", f.pattern) then
      error("fault: bad pattern", 0)
    end
  end
  if f.times ~= nil then f.times = php.intval(f.times) end
  -- after = n: the first n matching requests pass untouched (a failure in
  -- the middle of a run).
  if f.after ~= nil then f.after = php.intval(f.after) end
  self.list[#self.list + 1] = f
  return #self.list
end

function Faults:clear()
  self.list = {}
end

-- First fault matching `method`; consumes one of its `times` (or of its
-- `after`, letting the request pass).
function Faults:take(method)
  for i, f in ipairs(self.list) do
    local hit
    if f.method then
      hit = f.method == method
    elseif f.pattern then
      hit = method:find(f.pattern) ~= nil
    else
      hit = true
    end
    if hit and f.after and f.after > 0 then
      f.after = f.after - 1
      hit = false
    end
    if hit then
      if f.times then
        f.times = f.times - 1
        if f.times <= 0 then table.remove(self.list, i) end
      end
      return f
    end
  end
end

-- Where a redirect fault points: `location` as given, or, when it ends with
-- "/", that base plus the method part of the request; by default the same
-- path and query on 127.0.0.2 (a "moved portal", FACTS §1).
local function redirect_target(f, req, rest_tail)
  local query = (req.query and req.query ~= "") and ("?" .. req.query) or ""
  if f.location then
    if f.location:sub(-1) == "/" then return f.location .. rest_tail .. query end
    return f.location
  end
  local scheme, port = (req.base_url or "http://127.0.0.1"):match("^(%a+)://[^:/]+(:?%d*)")
  return (scheme or "http") .. "://127.0.0.2" .. (port or "") .. req.path .. query
end

-- Answer for a fault that replaces the call (nil for kinds that let the call
-- run and damage its answer afterwards: latency, truncate, malformed).
function Faults.response(f, req, rest_tail)
  local k = f.kind
  if k == "html502" then
    return { status = f.status or 502, headers = { ["Content-Type"] = "text/html" }, body = NGINX_502 }
  elseif k == "error500" then
    return json_response(f.status or 500, error_body("INTERNAL_SERVER_ERROR", "Internal server error"))
  elseif k == "error200" then
    -- A handler may return an error array without throwing: HTTP 200 (FACTS §3 [src]).
    return json_response(f.status or 200, error_body(f.error or "ERROR_CORE",
      f.error_description or "Simulated error with HTTP 200"))
  elseif k == "canned" then
    local body = f.body or ""
    local ctype = f.content_type or (body:match("^%s*[%[{]") and answers.JSON_TYPE or "text/html")
    return { status = f.status or 200, headers = { ["Content-Type"] = ctype }, body = body }
  elseif k == "redirect" then
    return { status = f.status or 302, headers = { Location = redirect_target(f, req, rest_tail) }, body = "" }
  elseif k == "reset" then
    return { status = 0, headers = {}, body = "", fault = "reset" }
  end
end

-- Damage a normal answer after the call ran.
function Faults.damage(f, res)
  if f.kind == "truncate" then
    res.fault = "truncate"
  elseif f.kind == "malformed" then
    res.body = res.body:sub(1, math.floor(#res.body / 2)) -- complete HTTP framing, broken JSON
  end
end

return Faults
