-- Many requests in flight, each through the one pipeline.
--
-- run(c, requests, parallel, on_each) sends requests (pipeline.request
-- states) with at most `parallel` in flight and calls on_each(i, envelope,
-- err) for each, in the order of `requests` (an answer that comes early
-- waits for those before it), so callers see the same order as one by
-- one. on_each returning false stops the rest: what is in flight is
-- aborted, nothing more is sent. window(c, parallel) is the same for work
-- whose next request depends on the answers so far: requests are added
-- while others are in flight (client:each's sliding window).
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

-- Delivers finished requests in input order. results[i] = { env, err }.
-- Returns false once on_each asked to stop.
local function deliverer(results, on_each)
  local next_out = 1
  return function()
    while results[next_out] do
      local r, i = results[next_out], next_out
      results[i] = true   -- delivered: the slot stays taken, the answer is let go
      next_out = i + 1
      if on_each(i, r[1], r[2]) == false then return false end
    end
    return true
  end, function() return next_out end
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

local function run_sequential(c, requests, on_each)
  local io = direct_io(c)
  for i, req in ipairs(requests) do
    local env, err = pipeline.run(c, req, io)
    if on_each(i, env, err) == false then return end
  end
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

local function run_multi(c, requests, parallel, on_each)
  local m = multi_of(c, parallel)
  local n, results, started = #requests, {}, 0
  local deliver, delivered = deliverer(results, on_each)
  local waiting = {}    -- ticket -> index of the coroutine waiting for it
  local sleeping = {}   -- index -> time it wakes up
  local threads = {}    -- index -> coroutine
  local active = 0      -- coroutines started and not finished

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

  local function closed() return not rawget(c, "_http") end

  local function step()
    -- (Answers wait for those before them: the window bounds how many.)
    while started < n and active < parallel and started < delivered() + parallel * 4 do
      started, active = started + 1, active + 1
      local i = started
      threads[i] = coroutine.create(function() return pipeline.run(c, requests[i], coroutine_io) end)
      resume(i)
    end
    if deliver() == false or closed() then return false end
    local now, wake = runtime.now(), math.huge
    local due = {}
    for i, at in pairs(sleeping) do
      if at <= now then due[#due + 1] = i elseif at < wake then wake = at end
    end
    if #due > 0 then
      table.sort(due)
      for _, i in ipairs(due) do
        sleeping[i] = nil
        resume(i)
      end
      return true
    end
    if m:in_flight() > 0 then
      local w = pack(m:wait(math.min(math.max(wake - now, 0), 60)))
      if w.n > 0 then
        local i = waiting[w[1]]
        waiting[w[1]] = nil
        resume(i, unpack(w, 2, w.n))
      end
    elseif wake < math.huge then
      runtime.sleep(math.max(wake - now, 0))
    end
    return true
  end

  local ok, err = pcall(function()
    while delivered() <= n and step() do end
  end)
  if not closed() then
    if m:in_flight() > 0 then m:abort() end
  elseif ok then
    -- (close() has closed the multi handle: its transfers are gone)
    for i = delivered(), n do results[i] = results[i] or { nil, cancelled(c, requests[i]) } end
    deliver()
  end
  if not ok then error(err, 0) end
end

---------------------------------------------------------------- nginx

local function run_threads(c, requests, parallel, on_each)
  local thread = runtime.ngx.thread
  local n, results, started, live = #requests, {}, 0, {}
  local deliver = deliverer(results, on_each)
  local io = direct_io(c)
  local function one(i) return i, pipeline.run(c, requests[i], io) end
  local ok, err = pcall(function()
    while true do
      while started < n and #live < parallel and rawget(c, "_http") do
        started = started + 1
        live[#live + 1] = { thread.spawn(one, started), started }
      end
      if #live == 0 then break end
      local threads = {}
      for k, t in ipairs(live) do threads[k] = t[1] end
      local done, i, env, rerr = thread.wait(unpack(threads))
      if not done then error(i, 0) end
      for k = #live, 1, -1 do
        if live[k][2] == i then table.remove(live, k) end
      end
      results[i] = { env, rerr }
      if deliver() == false then break end
      if not rawget(c, "_http") then
        for j = 1, n do results[j] = results[j] or { nil, cancelled(c, requests[j]) } end
        deliver()
        break
      end
    end
  end)
  -- A killed thread's cosocket is closed by ngx_lua: nothing half-read
  -- goes back to the connection pool.
  for _, t in ipairs(live) do thread.kill(t[1]) end
  if not ok then error(err, 0) end
end

---------------------------------------------------------------- a window

-- window(c, parallel): requests added while others are in flight, for work
-- whose next request depends on the answers so far (client:each). add(req)
-- queues a pipeline request; take() sends what is queued, up to
-- `parallel` in flight, and returns the envelope and error of the oldest
-- request not yet taken (answers come in the order of add; nothing is sent
-- between calls of take); close() aborts what is still in flight.

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
    close = function() end,
  }
end

local function multi_window(c, parallel)
  local m = multi_of(c, parallel)
  local reqs, n, results, taken, started, active = {}, 0, {}, 0, 0, 0
  local waiting, sleeping, threads = {}, {}, {}
  local function closed() return not rawget(c, "_http") end

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

  -- One turn of the scheduler: starts what may start, then resumes the
  -- requests that are due or waits for the next answer.
  local function step()
    while started < n and active < parallel do
      started, active = started + 1, active + 1
      local i = started
      threads[i] = coroutine.create(function() return pipeline.run(c, reqs[i], coroutine_io) end)
      resume(i)
    end
    if results[taken + 1] then return end
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
      local w = pack(m:wait(math.min(math.max(wake - now, 0), 60)))
      if w.n > 0 then
        local i = waiting[w[1]]
        waiting[w[1]] = nil
        resume(i, unpack(w, 2, w.n))
      end
    elseif wake < math.huge then
      runtime.sleep(math.max(wake - now, 0))
    end
  end

  local function close()
    if not closed() and m:in_flight() > 0 then m:abort() end
  end
  return {
    add = function(req) n = n + 1; reqs[n] = req end,
    take = function()
      local i = taken + 1
      local ok, err = pcall(function()
        while not results[i] do
          if closed() then
            -- (close() has closed the multi handle: its transfers are gone)
            results[i] = { nil, cancelled(c, reqs[i]) }
          else
            step()
          end
        end
      end)
      if not ok then close(); error(err, 0) end
      taken = i
      local r = results[i]
      results[i], reqs[i] = nil, nil
      return r[1], r[2]
    end,
    close = close,
  }
end

local function thread_window(c, parallel)
  local thread = runtime.ngx.thread
  local reqs, n, taken, started, live = {}, 0, 0, 0, {}
  local io = direct_io(c)
  local function one(req) return pipeline.run(c, req, io) end
  local function close()
    -- A killed thread's cosocket is closed by ngx_lua: nothing half-read
    -- goes back to the connection pool.
    for i, t in pairs(live) do thread.kill(t); live[i] = nil end
  end
  return {
    add = function(req) n = n + 1; reqs[n] = req end,
    take = function()
      local i = taken + 1
      while started < n and started - taken < parallel and rawget(c, "_http") do
        started = started + 1
        live[started] = thread.spawn(one, reqs[started])
      end
      local req = reqs[i]
      reqs[i], taken = nil, i
      if not live[i] then return nil, cancelled(c, req) end
      local done, env, err = thread.wait(live[i])
      live[i] = nil
      if not done then close(); error(env, 0) end
      return env, err
    end,
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

function M.run(c, requests, parallel, on_each)
  parallel = math.min(parallel or 1, #requests)
  if parallel <= 1 or c._transport_kind == "custom" then
    return run_sequential(c, requests, on_each)
  elseif c._transport_kind == "nginx" then
    return run_threads(c, requests, parallel, on_each)
  end
  return run_multi(c, requests, parallel, on_each)
end

return M
