-- A connection to Redis for the budgets and token stores shared between
-- machines (redis_budget.lua, redis_store.lua). It runs commands and
-- scripts; nothing else in the client talks to Redis.
--
-- The client library is required lazily, on the first command, so the
-- core and `require "bitrix24"` work where none is installed:
--   plain Lua  redis-lua (Debian `lua-redis`, `require "redis"`): pure Lua
--              over luasocket, so Redis adds no C dependency to the core;
--   nginx      lua-resty-redis (Debian `lua-nginx-redis`, which installs it
--              as `nginx.redis`; OpenResty's name is `resty.redis`) over
--              cosockets, with nginx's keep-alive pool.
--
-- A failed command (Redis down, a timeout, a refused password) closes the
-- connection, and no new one is tried for `retry_after` seconds: during an
-- outage each call costs nothing instead of a connect timeout, and after it
-- the next call connects again.

local errors = require "bitrix24.errors"
local runtime = require "bitrix24.runtime"

local M = {}

local DEFAULTS = {
  host = "127.0.0.1", port = 6379, db = 0, prefix = "bitrix24:",
  connect_timeout = 1, read_timeout = 1, retry_after = 5,
  keepalive = 60, pool_size = 32,   -- nginx only: seconds idle, connections per worker
}

local KEYS = {
  url = "string", host = "string", port = "number", user = "string", password = "string", db = "number",
  prefix = "string", connect_timeout = "number", read_timeout = "number", retry_after = "number",
  keepalive = "number", pool_size = "number", budget_fallback = "boolean", report = "function",
}

local function unescape(s)
  return s and (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- redis://[user:password@]host[:port][/db]; the user may be empty
-- (redis://:password@host). Returns the fields, or nil.
local function parse_url(url)
  local rest = url:match("^redis://(.*)$")
  if not rest then return nil end
  local cfg = {}
  local userinfo, hostpart = rest:match("^(.*)@([^@]*)$")
  if userinfo then
    local user, password = userinfo:match("^([^:]*):(.*)$")
    if user then
      cfg.user, cfg.password = user ~= "" and unescape(user) or nil, unescape(password)
    else
      cfg.password = unescape(userinfo)
    end
    rest = hostpart
  end
  local host, port, db = rest:match("^([^:/]+):?(%d*)/?(%d*)$")
  if not host then return nil end
  cfg.host, cfg.port, cfg.db = host, tonumber(port), tonumber(db)
  return cfg
end

--- The settings of a Redis connection from `config` (a redis:// URL or a
--- table, whose `url` may give the address), with the defaults filled in.
--- Raises naming the wrong field (`who` names the public function).
function M.config(config, who)
  if type(config) == "string" then config = { url = config } end
  if type(config) ~= "table" then errors.raise(3, who .. ": config must be a redis:// URL or a table") end
  for k, v in pairs(config) do
    if KEYS[k] == nil then errors.raise(3, errors.message("%s: unknown config field %s", who, tostring(k))) end
    if type(v) ~= KEYS[k] then
      errors.raise(3, errors.message("%s: config.%s must be a %s", who, k, KEYS[k]))
    end
  end
  local cfg = {}
  if config.url then
    local from = parse_url(config.url)
    -- (The URL may hold a password: it is never repeated.)
    if not from then errors.raise(3, who .. ": config.url must look like redis://[user:password@]host:port/db") end
    for k, v in pairs(from) do cfg[k] = v end
  end
  for k, v in pairs(config) do if k ~= "url" then cfg[k] = v end end
  for k, v in pairs(DEFAULTS) do if cfg[k] == nil then cfg[k] = v end end
  for _, k in ipairs { "connect_timeout", "read_timeout" } do
    if not (cfg[k] > 0) then errors.raise(3, errors.message("%s: config.%s must be positive", who, k)) end
  end
  if cfg.db < 0 or cfg.db % 1 ~= 0 then errors.raise(3, who .. ": config.db must be a whole number") end
  cfg.where = cfg.host .. ":" .. cfg.port .. "/" .. cfg.db
  return cfg
end

---------------------------------------------------------------- libraries

local function need(names, package)
  for _, name in ipairs(names) do
    local ok, lib = pcall(require, name)
    if ok then return lib end
  end
  error(errors.message("bitrix24: Redis needs the %s library (Debian: apt-get install %s); see"
    .. " docs/many-machines.md", names[1], package), 0)
end

-- redis-lua sends a command through a function made for its name.
local commands = {}

-- One connection in plain Lua: a luasocket with its own connect and read
-- timeouts, given to redis-lua (whose own connect has one timeout for both).
local function plain_connect(cfg)
  local redis = need({ "redis" }, "lua-redis")   -- (M.new has checked it is there)
  local socket = require "socket"
  local sock = socket.tcp()
  sock:settimeout(cfg.connect_timeout)
  local ok, err = sock:connect(cfg.host, cfg.port)
  if not ok then
    sock:close()
    return nil, "cannot connect to Redis at " .. cfg.host .. ":" .. cfg.port .. ": " .. tostring(err)
  end
  sock:setoption("tcp-nodelay", true)
  sock:settimeout(cfg.read_timeout)
  local client = redis.connect { socket = sock }
  local conn = {}
  -- redis-lua raises on errors: an error reply starts "redis error: ",
  -- anything else is the connection's (timeout, closed).
  function conn.run(name, ...)
    local command = commands[name]
    if not command then
      command = redis.command(name)
      commands[name] = command
    end
    local okc, r = pcall(command, client, ...)
    if okc then return r end
    r = tostring(r)
    local reply = r:match("redis error: (.*)$")
    if reply then return nil, reply end
    conn.broken = true
    return nil, "Redis at " .. cfg.host .. ":" .. cfg.port .. ": " .. r:gsub("^.-:%d+: ", "")
  end
  function conn.close() sock:close() end
  return conn
end

-- One connection inside nginx, from the worker's pool.
local function nginx_connect(cfg)
  local resty = need({ "resty.redis", "nginx.redis" }, "lua-nginx-redis")
  local red, err = resty:new()
  if not red then return nil, "Redis: " .. tostring(err) end
  red:set_timeout(cfg.connect_timeout * 1000)
  -- The pool is per address, database and user: a pooled connection has
  -- already been authenticated and has selected its database.
  local ok
  ok, err = red:connect(cfg.host, cfg.port, { pool = "bitrix24:" .. cfg.where .. ":" .. (cfg.user or "") })
  if not ok then return nil, "cannot connect to Redis at " .. cfg.host .. ":" .. cfg.port .. ": " .. tostring(err) end
  red:set_timeout(cfg.read_timeout * 1000)
  local conn = {
    fresh = (red:get_reused_times() or 0) == 0,
    close = function() red:close() end,
    release = function() red:set_keepalive(cfg.keepalive * 1000, cfg.pool_size) end,
  }
  -- lua-resty-redis answers an error reply with false, err, a failure of
  -- the connection with nil, err.
  function conn.run(name, ...)
    local r, e = red[name:lower()](red, ...)
    if r == false then return nil, tostring(e) end
    if r == nil then
      conn.broken = true
      return nil, "Redis at " .. cfg.host .. ":" .. cfg.port .. ": " .. tostring(e)
    end
    if r == runtime.ngx.null then return nil end
    return r
  end
  return conn
end

---------------------------------------------------------------- connections

-- When each address may be tried again after a failure (per process or
-- nginx worker, so that every budget and store on one Redis agrees).
local down_until = {}

local Conn = {}
Conn.__index = Conn

-- Raises, naming the Debian package, when the Redis library of this
-- runtime is not installed: a budget or store made without it could never
-- work.
function M.new(cfg)
  if runtime.nginx then need({ "resty.redis", "nginx.redis" }, "lua-nginx-redis") else need({ "redis" }, "lua-redis") end
  return setmetatable({ cfg = cfg, shas = {} }, Conn)
end

-- Opens (or, in plain Lua, reuses) a connection, authenticated and on its
-- database. Returns it, or nil, err.
function Conn:open()
  local cfg = self.cfg
  if self.conn then return self.conn end
  local wait = (down_until[cfg.where] or 0) - runtime.now()
  if wait > 0 then
    return nil, string.format("Redis at %s:%s was unreachable; trying again in %.1f s", cfg.host, cfg.port, wait)
  end
  local conn, err
  if runtime.nginx then
    conn, err = nginx_connect(cfg)
  else
    conn, err = plain_connect(cfg)
    if conn then conn.fresh = true end
  end
  if not conn then return nil, err end
  if conn.fresh then
    local ok, e = true, nil
    if cfg.password then
      if cfg.user then ok, e = conn.run("AUTH", cfg.user, cfg.password) else ok, e = conn.run("AUTH", cfg.password) end
    end
    if ok and cfg.db ~= 0 then ok, e = conn.run("SELECT", cfg.db) end
    if not ok then
      conn.close()
      return nil, "Redis at " .. cfg.host .. ":" .. cfg.port .. " refused the login: " .. tostring(e)
    end
  end
  if not runtime.nginx then self.conn = conn end
  return conn
end

-- A failure: the connection is dropped and the address rested.
function Conn:failed(conn)
  pcall(conn.close)
  self.conn = nil
  down_until[self.cfg.where] = runtime.now() + self.cfg.retry_after
end

-- Runs fn(run) with run(command, ...) -> reply | nil, err on an open
-- connection. Returns fn's results, or nil, err, true when Redis could not
-- be used (down, a timeout, a refused login): the connection is dropped.
function Conn:with(fn)
  local conn, err = self:open()
  if not conn then
    if not self:resting() then down_until[self.cfg.where] = runtime.now() + self.cfg.retry_after end
    return nil, err, true
  end
  local ok, a, b = pcall(fn, conn.run)
  if not ok or conn.broken then
    self:failed(conn)
    return nil, ok and b or tostring(a), true
  end
  down_until[self.cfg.where] = nil
  if conn.release then conn.release() end
  return a, b
end

-- Whether commands to this address are currently held back after a failure.
function Conn:resting()
  return (down_until[self.cfg.where] or 0) > runtime.now()
end

-- Runs a script by its SHA1 (one round trip); a Redis that does not know
-- it (restarted, flushed) gets its text. The SHA1 comes from SCRIPT LOAD
-- once per process: plain Lua 5.1 has no SHA1 of its own.
function M.eval(run, script, keys, args)
  local sha = script.sha
  if not sha then
    local e
    sha, e = run("SCRIPT", "LOAD", script.source)
    if not sha then return nil, e end
    script.sha = sha
  end
  local r, e = run("EVALSHA", sha, #keys, M.unpack_all(keys, args))
  if r == nil and e and e:find("NOSCRIPT", 1, true) then
    r, e = run("EVAL", script.source, #keys, M.unpack_all(keys, args))
  end
  return r, e
end

local unpack = table.unpack or unpack

function M.unpack_all(keys, args)
  local all = {}
  for _, v in ipairs(keys) do all[#all + 1] = v end
  for _, v in ipairs(args) do all[#all + 1] = v end
  return unpack(all)
end

return M
