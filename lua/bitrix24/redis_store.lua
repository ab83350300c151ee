-- The OAuth token store in Redis, for clients on many machines (see
-- docs/many-machines.md). It answers auth.lua's store calls: load, save,
-- lock.
--
-- The lock is a key set only if absent (SET NX PX) holding a random owner
-- token, and deleted only by a script that checks that token: a machine
-- whose lock expired never frees someone else's. auth.lua reloads the
-- tokens under the lock, so a machine that waited for it adopts the tokens
-- the first one got: one token request per expiry, however many machines.
-- A save under the lock is a compare-and-set against what was loaded
-- under it: should the lock have expired during a slow refresh and another
-- machine have saved newer tokens meanwhile, they are not overwritten.
--
-- When Redis cannot be reached the lock is not taken and nothing is
-- loaded: the refresh goes ahead (a dead access token cannot wait for
-- Redis), the new tokens reach the client and on_refresh, and the call
-- answers STORE_ERROR because the save failed. Other machines that refresh
-- during the same outage cannot be kept from racing.

local cjson = require "cjson"
local core = require "bitrix24.core"
local redis = require "bitrix24.redis"
local runtime = require "bitrix24.runtime"

local json = cjson.new()

local M = {}

local LOCK_TTL = 30      -- seconds: the lock is held across the token request
local LOCK_WAIT = 30     -- seconds to wait for another machine's refresh
local LOCK_POLL = 0.02   -- seconds between tries

local UNLOCK = { source = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
]] }

-- ARGV[1]: the new text; ARGV[2]: "1" to compare, ARGV[3]: the text loaded
-- under the lock ("" for none).
local SAVE = { source = [[
if ARGV[2] == '1' then
  local now = redis.call('GET', KEYS[1]) or ''
  if now ~= ARGV[3] then return 'NEWER' end
end
redis.call('SET', KEYS[1], ARGV[1])
return 'OK'
]] }

-- An owner token no other lock holder can have.
local function owner()
  local f = io.open("/dev/urandom", "rb")
  local bytes = f and f:read(16)
  if f then f:close() end
  if not bytes or #bytes < 16 then
    bytes = tostring(core.now()) .. tostring({}) .. tostring(math.random())
  end
  return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

--- config: a redis:// URL or a table (see redis.config); key names the
--- token set (one per installation: several apps or portals share a Redis).
function M.new(config, key)
  local cfg = redis.config(config, "redis_store")
  local conn = redis.new(cfg)
  local name = cfg.prefix .. "tokens:" .. tostring(key or "default")
  local lock_name = name .. ":lock"
  local store = {}
  -- The lock each coroutine holds (in nginx one store serves many
  -- requests), and what it loaded under it (the save compares against it);
  -- `unreachable` when Redis could not be used for the lock.
  local holds = setmetatable({}, { __mode = "k" })
  local function me_now() return coroutine.running() or holds end

  function store.load()
    local held = holds[me_now()]
    if held and held.unreachable then return nil end
    local text, err, failed = conn:with(function(run) return run("GET", name) end)
    if failed then return nil, err end
    if held then held.loaded = text or "" end
    if text == nil then return nil end
    local t = core.json_decode(text)
    if type(t) ~= "table" then return nil, "Redis " .. name .. " is not a JSON object" end
    return t
  end

  function store.save(_, tokens)
    local ok, text = pcall(json.encode, tokens)
    if not ok then return nil, "cannot encode the tokens: " .. tostring(text) end
    local held = holds[me_now()]
    local compare = held and held.loaded
    local r, err = conn:with(function(run)
      return redis.eval(run, SAVE, { name }, { text, compare and "1" or "0", compare or "" })
    end)
    if r == "OK" then
      if held then held.loaded = text end
      return true
    end
    if r == "NEWER" then
      return nil, "Redis " .. name .. " holds newer tokens saved by another machine (this one's lock had "
        .. "expired); they were kept"
    end
    return nil, "Redis token store: " .. tostring(err)
  end

  function store.lock()
    local me, co = owner(), me_now()
    local waited = 0
    while true do
      local r, err, failed = conn:with(function(run)
        return run("SET", lock_name, me, "NX", "PX", LOCK_TTL * 1000)
      end)
      if r then
        holds[co] = { owner = me }
        return function()
          holds[co] = nil
          conn:with(function(run) return redis.eval(run, UNLOCK, { lock_name }, { me }) end)
        end
      end
      if failed then
        holds[co] = { unreachable = true }
        return function() holds[co] = nil end
      end
      if err then return nil, "Redis token store: " .. tostring(err) end
      if waited >= LOCK_WAIT then
        return nil, "the Redis lock " .. lock_name .. " stayed busy for " .. LOCK_WAIT .. " s"
      end
      runtime.sleep(LOCK_POLL)
      waited = waited + LOCK_POLL
    end
  end

  return store
end

return M
