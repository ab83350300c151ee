-- Many requests in flight, each through the one pipeline.
--
-- window(c, parallel) holds requests (pipeline.request states) added one
-- by one, at most `parallel` in flight, and gives their answers back in
-- the order added; client:each adds a request when an answer says what
-- to ask next. run(c, requests, parallel, on_each) is a window with every
-- request added at once: on_each(i, envelope, err) sees them in the order
-- of `requests`, as one by one would; on_each returning false stops the
-- rest (what is in flight is aborted, nothing more is sent).
--
-- How requests are in flight together depends on where the code runs:
--   parallel = 1, or a transport of the caller's own: one after the other,
--     blocking, exactly as a single call;
--   plain Lua with libcurl: each request's pipeline is a coroutine whose
--     send and sleep yield to a small scheduler here; it starts the sends on
--     one core.multi handle and sleeps in multi:wait until the next answer
--     or the next wake-up, whichever comes first;
--   nginx (cosockets): one ngx.thread per request in flight, calling the
--     transport and ngx.sleep directly.
-- Each request takes its place in the client's budget before it is sent
-- (the pipeline's first step), so requests in flight never overshoot the
-- bucket.
--
-- Stopping: an error raised anywhere (a callback, a hook) aborts every
-- request in flight before it propagates; client:close() during the
-- fan-out does the same, and the requests not finished get CANCELLED.

local core = require "bitrix24.core"
local errors = require "bitrix24.errors"
local pipeline = require "bitrix24.pipeline"
local runtime = require "bitrix24.runtime"

local unpack = table.unpack or unpack

local M = { MAX_PARALLEL = 256 }

-- What is wrong with opts.parallel = v, or nil (nil is fine: the default).
function M.check(v, who)
  if v == nil then return nil end
  if type(v) ~= "number" or v ~= math.floor(v) or v < 1 or v > M.MAX_PARALLEL then
    return errors.message("%sopts.parallel must be a whole number from 1 to %d, got %s", who, M.MAX_PARALLEL,
      tostring(v))
  end
  return nil
end

local cancelled = pipeline.cancelled

--- The blocking transport as the pipeline's io.
function M.io(c)
  return {
    send = function(url, body, left, write) return c._http:call(url, body, left, write) end,
    sleep = runtime.sleep, now = runtime.now,
  }
end
local direct_io = M.io

---------------------------------------------------------------- the windows

-- window(c, parallel) -> { add, take, pump, close }: add(req) queues a
-- pipeline request and sends it at once when fewer than `parallel` are in
-- flight (else as soon as one ends); take() returns the envelope and error
-- of the oldest request not yet taken, running the others meanwhile;
-- pump() moves the transfers on without waiting (for a caller busy
-- between takes); close() aborts what is still in flight. Answers that
-- come early wait for those before them, and at most AHEAD * parallel
-- requests are started past the oldest not taken (a slow one cannot make
-- the rest pile up).
local AHEAD = 4

local function sequential_window(c)
  local reqs, n, taken = {}, 0, 0
  return {
    add = function(req) n = n + 1; reqs[n] = req end,
    take = function()
      taken = taken + 1
      local req = reqs[taken]
      reqs[taken] = nil
      return pipeline.run(c, req, direct_io(c))
    end,
    pump = function() end,
    close = function() end,
  }
end

---------------------------------------------------------------- plain Lua

-- The pipeline's io inside a coroutine: both yield to the scheduler.
local yield = coroutine.yield
local coroutine_io = {
  send = function(url, body, left, write) return yield("send", url, body, left, write) end,
  sleep = function(seconds) return yield("sleep", seconds) end,
  now = runtime.now,
}

local function pack(...) return { n = select("#", ...), ... } end

-- The client's core.multi handle (one per client, so its connections stay
-- alive between fan-outs), with room for `parallel` requests; close()
-- closes it.
local function multi_of(c, parallel)
  local m = rawget(c, "_multi_handle")
  -- (An export left early leaves its window's transfers behind: they are
  -- let go, or their answers would come to the next fan-out.)
  if m and m:in_flight() > 0 then m:abort() end
  if m and c._multi_parallel >= parallel then return m end
  if m then m:close() end
  local o = { parallel = parallel }
  for k, v in pairs(c._http_opts) do o[k] = v end
  m = core.multi(o)
  c._multi_handle, c._multi_parallel = m, parallel
  return m
end

-- Each request's pipeline is a coroutine; its send starts a transfer on
-- the multi handle and its sleep files it under the time it wakes up.
local function multi_window(c, parallel)
  local m = multi_of(c, parallel)
  local reqs, n, results, taken, started, active = {}, 0, {}, 0, 0, 0
  local waiting = {}    -- ticket -> index of the coroutine waiting for it
  local sleeping = {}   -- index -> time it wakes up
  local threads = {}    -- index -> coroutine
  local function closed() return not rawget(c, "_http") end

  -- Resumes coroutine i with the values it waited for, then files it
  -- under what it waits for next, or its result.
  local function resume(i, ...)
    local r = pack(coroutine.resume(threads[i], ...))
    if not r[1] then error(r[2], 0) end
    if coroutine.status(threads[i]) == "dead" then
      threads[i], active = nil, active - 1
      results[i] = { r[2], r[3] }
    elseif r[2] == "send" then
      waiting[m:start(r[3], r[4], r[5], r[6])] = i
    else
      sleeping[i] = runtime.now() + r[3]
    end
  end

  -- Starts the requests that may start; true when one did.
  local function start()
    local any = false
    while started < n and active < parallel and started <= taken + parallel * AHEAD do
      started, active, any = started + 1, active + 1, true
      local i, req = started, reqs[started]
      threads[i] = coroutine.create(function() return pipeline.run(c, req, coroutine_io) end)
      resume(i)
    end
    return any
  end

  -- One turn: starts what may start, then resumes the requests that are
  -- due, or waits up to `most` seconds for the next answer or wake-up
  -- (0: libcurl only sends and reads what it can without waiting).
  local function step(most)
    start()
    -- (A hook of a request just started may have closed the client.)
    if closed() then return end
    local now, wake, due = runtime.now(), math.huge, {}
    for i, at in pairs(sleeping) do
      if at <= now then due[#due + 1] = i elseif at < wake then wake = at end
    end
    if #due > 0 then
      table.sort(due)
      for _, i in ipairs(due) do
        sleeping[i] = nil
        resume(i)
      end
    elseif m:in_flight() > 0 then
      local w = pack(m:wait(math.min(math.max(wake - now, 0), most)))
      if w.n > 0 then
        local i = waiting[w[1]]
        waiting[w[1]] = nil
        resume(i, unpack(w, 2, w.n))
      end
    elseif wake < math.huge and most > 0 then
      runtime.sleep(math.min(math.max(wake - now, 0), most))
    end
  end

  local function close()
    if not closed() and m:in_flight() > 0 then m:abort() end
  end
  local function guarded(f)
    local ok, err = pcall(f)
    if not ok then close(); error(err, 0) end
  end
  return {
    add = function(req)
      n = n + 1
      reqs[n] = req
      -- Sent now, not at the next take: the caller may be busy a while.
      guarded(function() if not closed() and start() then step(0) end end)
    end,
    take = function()
      local i = taken + 1
      guarded(function()
        while not results[i] do
          if closed() then
            -- (close() has closed the multi handle: its transfers are gone)
            results[i] = { nil, cancelled(c, reqs[i]) }
          else
            step(60)
          end
        end
      end)
      taken = i
      local r = results[i]
      results[i], reqs[i] = nil, nil
      return r[1], r[2]
    end,
    -- Lets libcurl send and read what it can without waiting, and
    -- finishes what it read: called while the caller is busy between
    -- takes (handshakes of new connections go on meanwhile).
    pump = function()
      guarded(function() if not closed() and m:in_flight() > 0 then step(0) end end)
    end,
    close = close,
  }
end

---------------------------------------------------------------- nginx

-- One ngx.thread per request in flight, calling the transport and
-- ngx.sleep directly.
local function thread_window(c, parallel)
  local thread = runtime.ngx.thread
  local reqs, n, results, taken, started, live, active = {}, 0, {}, 0, 0, {}, 0
  local io = direct_io(c)
  local function one(i, req) return i, pipeline.run(c, req, io) end
  local function close()
    -- A killed thread's cosocket is closed by ngx_lua: nothing half-read
    -- goes back to the connection pool.
    for i, t in pairs(live) do thread.kill(t); live[i] = nil end
    active = 0
  end
  local function start()
    while started < n and active < parallel and started <= taken + parallel * AHEAD and rawget(c, "_http") do
      started, active = started + 1, active + 1
      live[started] = thread.spawn(one, started, reqs[started])
    end
  end
  -- Waits for thread i alone: ngx.thread.wait on several threads leaves
  -- the others marked as waited for, and one of them ending later would
  -- resume this thread inside whatever it does then (the caller's own
  -- cosocket call between two takes).
  local function wait_for(i)
    local done, first, env, err = thread.wait(live[i])
    if not done then close(); error(first, 0) end
    live[i], active, results[i] = nil, active - 1, { env, err }
  end
  return {
    add = function(req)
      n = n + 1
      reqs[n] = req
      start()
    end,
    take = function()
      local i = taken + 1
      start()
      while not results[i] do
        if not rawget(c, "_http") or not live[i] then
          -- Closed during the fan-out: what did not finish is cancelled.
          close()
          results[i] = { nil, cancelled(c, reqs[i]) }
        else
          wait_for(i)
          start()
        end
      end
      taken = i
      local r = results[i]
      results[i], reqs[i] = nil, nil
      return r[1], r[2]
    end,
    -- (The threads run whenever this one waits: nothing to do.)
    pump = function() end,
    close = close,
  }
end

function M.window(c, parallel)
  parallel = parallel or 1
  if parallel <= 1 or c._transport_kind == "custom" then return sequential_window(c) end
  if c._transport_kind == "nginx" then return thread_window(c, parallel) end
  return multi_window(c, parallel)
end

---------------------------------------------------------------- the entry

-- run: every request added at once, answers given to on_each in order.
function M.run(c, requests, parallel, on_each)
  local w = M.window(c, math.min(parallel or 1, #requests))
  local ok, err = pcall(function()
    for _, req in ipairs(requests) do w.add(req) end
    for i = 1, #requests do
      local env, rerr = w.take()
      if on_each(i, env, rerr) == false then return end
    end
  end)
  w.close()
  if not ok then error(err, 0) end
end

return M
