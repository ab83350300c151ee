-- Where state shared between processes lives: the rate budgets and the
-- OAuth token stores are both built on these two places.
--
--   store.file(path)            a JSON file beside its lock file (path.lock),
--                               written atomically (mode 0600) by the C core
--   store.dict(dict, key, ...)  an entry of an nginx lua_shared_dict, with a
--                               lock key beside it
--
-- Both answer the same calls: read() -> true, decoded (nil when it is not
-- JSON) | false (nothing there) | nil, err; write(text) -> true | nil, err;
-- lock() -> unlock function | nil, err. store.locked(place, fn, ...) runs
-- fn under the lock and always gives it back, whatever fn does.
--
-- Shared dicts have atomic single operations but no transactions, so a
-- read-modify-write holds a lock: a key created with add(), which fails
-- while the key exists, deleted afterwards. Its expiry only matters if a
-- worker died holding it; waiting uses ngx.sleep, which yields to the
-- worker's other requests.

local core = require "bitrix24.core"
local errors = require "bitrix24.errors"
local runtime = require "bitrix24.runtime"

local unpack = table.unpack or unpack

local M = {}

---------------------------------------------------------------- files

local File = {}
File.__index = File

-- clean: "always" removes temp files of writers killed mid-write at every
-- write (for rare writes), otherwise only at this object's first write (a
-- directory scan, too costly for every request).
function M.file(path, clean)
  return setmetatable({ path = path, clean = clean, cleaned = false }, File)
end

function File:read()
  local f, err, errno = io.open(self.path, "rb")
  if not f then
    if errno == 2 then return false end   -- ENOENT: nothing there yet
    return nil, tostring(err)
  end
  local text = f:read("*a") or ""
  f:close()
  return true, core.json_decode(text)
end

function File:write(text)
  local ok, err = core.write_file(self.path, text, self.clean == "always" or not self.cleaned)
  self.cleaned = true
  return ok, err
end

-- Held at most 60 s: a process holding it longer is stuck.
function File:lock()
  local lock, err = core.lock(self.path .. ".lock", 60)
  if not lock then return nil, err end
  return function() lock:unlock() end
end

---------------------------------------------------------------- shared dicts

-- dict: ngx.shared.NAME or NAME. Returns the dictionary, or nil and why
-- (who names the caller in it).
function M.resolve(dict, who)
  if type(dict) == "string" then
    dict = runtime.shared_dict(dict)
    if not dict then return nil, errors.message("%s: no lua_shared_dict of that name", who) end
  end
  if (type(dict) ~= "table" and type(dict) ~= "userdata") or type(dict.add) ~= "function" then
    return nil, errors.message("%s: dict must be an ngx.shared dictionary or its name", who)
  end
  return dict
end

-- Takes the lock `key`, expiring after ttl seconds, waiting up to `wait`
-- seconds in steps of `poll`. Returns an unlock function, or nil, err.
function M.dict_lock(dict, key, ttl, wait, poll)
  local waited = 0
  while true do
    local ok, err = dict:add(key, true, ttl)
    if ok then return function() dict:delete(key) end end
    if err ~= "exists" then return nil, "shared dict: " .. tostring(err) end
    if waited >= wait then return nil, "shared dict: the lock " .. key .. " stayed busy for " .. wait .. " s" end
    runtime.sleep(poll)
    waited = waited + poll
  end
end

local Dict = {}
Dict.__index = Dict

-- The entry `key` of dict; its lock is the key lock_key, held at most ttl
-- seconds, waited for up to `wait` seconds in steps of `poll`.
function M.dict(dict, key, lock_key, ttl, wait, poll)
  return setmetatable({ dict = dict, key = key, lock_key = lock_key, ttl = ttl, wait = wait, poll = poll }, Dict)
end

function Dict:read()
  local raw = self.dict:get(self.key)
  if raw == nil then return false end
  return true, type(raw) == "string" and core.json_decode(raw) or nil
end

function Dict:write(text)
  return self.dict:set(self.key, text)
end

function Dict:delete()
  self.dict:delete(self.key)
end

function Dict:lock()
  return M.dict_lock(self.dict, self.lock_key, self.ttl, self.wait, self.poll)
end

---------------------------------------------------------------- both

local function pack(...) return { n = select("#", ...), ... } end

--- Runs fn(...) holding place's lock, and gives the lock back even if fn
--- raises. Returns true and fn's results, false and what fn raised, or
--- nil and why the lock could not be taken.
function M.locked(place, fn, ...)
  local unlock, err = place:lock()
  if not unlock then return nil, err end
  local r = pack(pcall(fn, ...))
  pcall(unlock)
  return unpack(r, 1, r.n)
end

---------------------------------------------------------------- token stores

-- save(tokens) of a token store (ours or the caller's: bitrix24.oauth's
-- `store`, the events' per-portal stores), which may fail or raise:
-- -> true | nil, err, never raising.
function M.save_to(s, t)
  local ok, done, err = pcall(s.save, s, t)
  if not ok then return nil, tostring(done) end
  if not done then return nil, tostring(err) end
  return true
end

return M
