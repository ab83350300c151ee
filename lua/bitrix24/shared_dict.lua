-- nginx lua_shared_dict pieces for state every worker shares (the rate
-- budget, OAuth tokens). Shared dicts have atomic single operations but no
-- transactions, so a read-modify-write holds a lock: a key created with
-- add(), which fails while the key exists, deleted afterwards. Its expiry
-- only matters if a worker died holding it; waiting uses ngx.sleep, which
-- yields to the worker's other requests.

local errors = require "bitrix24.errors"

local M = {}

-- dict: ngx.shared.NAME or NAME. Returns the dictionary, or nil and why
-- (who names the caller in it).
function M.resolve(dict, who)
  if type(dict) == "string" then
    local ngx = rawget(_G, "ngx")
    dict = type(ngx) == "table" and type(ngx.shared) == "table" and ngx.shared[dict] or nil
    if not dict then return nil, errors.message("%s: no lua_shared_dict of that name", who) end
  end
  if (type(dict) ~= "table" and type(dict) ~= "userdata") or type(dict.add) ~= "function" then
    return nil, errors.message("%s: dict must be an ngx.shared dictionary or its name", who)
  end
  return dict
end

-- Takes the lock `key`, expiring after ttl seconds, waiting up to `wait`
-- seconds in steps of `poll`. Returns an unlock function, or nil, err.
function M.lock(dict, key, ttl, wait, poll)
  local waited = 0
  while true do
    local ok, err = dict:add(key, true, ttl)
    if ok then return function() dict:delete(key) end end
    if err ~= "exists" then return nil, "shared dict: " .. tostring(err) end
    if waited >= wait then return nil, "shared dict: the lock " .. key .. " stayed busy for " .. wait .. " s" end
    rawget(_G, "ngx").sleep(poll)
    waited = waited + poll
  end
end

return M
