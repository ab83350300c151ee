-- The offline queue consumer (FACTS §12.4): events Bitrix24 keeps for an
-- application instead of POSTing them, fetched with event.offline.get.
--
-- At least once, never lost: each batch is fetched with clear=0, which
-- reserves it under a process_id; that id is saved in opts.store BEFORE
-- any event is handled, and a run that starts with an id in the store asks
-- for that process's records again. So a consumer killed anywhere between
-- fetch and clear gets the same events back on its next run (and may
-- handle some twice: handlers must be idempotent). Only the records
-- handled are cleared (by ID); the ones whose handler failed are marked
-- with event.offline.error and are not fetched again by this consumer
-- (list them with event.offline.list, filter ERROR=1).

local errors = require "bitrix24.errors"
local stored = require "bitrix24.store"
local binding = require "bitrix24.events.binding"

local fail = errors.message

local M = {}

local function load(store)
  local ok, t, err = pcall(store.load, store)
  if not ok then return nil, tostring(t) end
  if t == nil and err ~= nil then return nil, tostring(err) end
  return type(t) == "table" and t or {}
end


local function store_error(why)
  return errors.new { code = "STORE_ERROR", method = "event.offline.get",
    description = "the offline consumer's store (its process_id) failed: " .. why }
end

local OPTS = { store = "table", handler = "function", limit = "number", filter = "table",
  auth_connector = "string", max_batches = "number", on_error = "function" }

-- true | nil, why (a programmer error: the caller raises it).
function M.check(client, opts)
  local ok, why = binding.check_app(client, "consume_offline")
  if not ok then return nil, why end
  if type(opts) ~= "table" then return nil, fail("consume_offline: opts must be a table") end
  for k, v in pairs(opts) do
    if not OPTS[k] then return nil, fail("consume_offline: unknown opts.%s", k) end
    if type(v) ~= OPTS[k] then return nil, fail("consume_offline: opts.%s must be a %s", k, OPTS[k]) end
  end
  local store = opts.store
  if not store or type(store.load) ~= "function" or type(store.save) ~= "function" then
    return nil, fail("consume_offline: opts.store must have load and save functions")
  end
  if not opts.handler then return nil, fail("consume_offline: opts.handler is required") end
  return true
end

--- consume(client, opts) -> handled, failed | nil, err (opts checked by M.check)
--- opts.store: where the process_id lives between runs (bitrix24.file_store(path), or any {load, save});
--- opts.handler(event) -> true when handled (a raise or a false/nil answer marks it failed);
--- opts.limit (50 per batch), opts.filter, opts.auth_connector, opts.max_batches (default: until the
--- queue is empty), opts.on_error(event, err) (told about each failure).
function M.consume(client, opts)
  local store, handler = opts.store, opts.handler
  local handled, failed, batches = 0, 0, 0
  while not opts.max_batches or batches < opts.max_batches do
    batches = batches + 1
    local state, lerr = load(store)
    if not state then return nil, store_error(lerr) end
    local pid = type(state.process_id) == "string" and state.process_id or nil
    local res, err = client:call("event.offline.get", { clear = 0, limit = opts.limit, filter = opts.filter,
      auth_connector = opts.auth_connector, process_id = pid })
    if not res then return nil, err end
    local list = type(res.events) == "table" and res.events or {}
    if #list == 0 then
      if pid then stored.save_to(store, {}) end
      return handled, failed
    end
    local got = type(res.process_id) == "string" and res.process_id or pid
    -- Saved before anything is handled: the whole point (see the top).
    -- If it cannot be saved, this run still handles and clears the batch,
    -- then reports the store.
    local serr
    if got ~= pid then
      local ok, e = stored.save_to(store, { process_id = got })
      if not ok then serr = e end
    end
    local ids, mids = {}, {}
    for _, ev in ipairs(list) do
      local ok, r, why = pcall(handler, ev)
      if ok and r then
        ids[#ids + 1] = ev.ID
      else
        mids[#mids + 1] = ev.MESSAGE_ID
        if opts.on_error then pcall(opts.on_error, ev, ok and why or r) end
      end
    end
    if #mids > 0 then
      local r, e = client:call("event.offline.error", { process_id = got, message_id = mids })
      if r == nil then return nil, e end
      failed = failed + #mids
    end
    if #ids > 0 then
      local r, e = client:call("event.offline.clear", { process_id = got, id = ids })
      if r == nil then return nil, e end
      handled = handled + #ids
    end
    -- This process is done with: the next batch gets a fresh reservation.
    local ok, e = stored.save_to(store, {})
    if serr or not ok then return nil, store_error(serr or e) end
  end
  return handled, failed
end

return M
