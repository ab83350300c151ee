-- The HTTP transport for code running inside nginx (ngx_lua / OpenResty).
--
-- libcurl blocks: while one request waits for the portal, the whole nginx
-- worker (and every request it serves) would wait too. This transport does
-- the same job over ngx_lua's cosockets, which yield to nginx's event loop
-- instead. It has the interface of the C handle from core.http(opts):
--
--   t:call(url, json_body [, timeout [, write]]) -> envelope, status | nil, failure
--   t:request(url [, body]) -> status, body | nil, failure
--   t:close()
--
-- failure = { code =, description =, status = (or nil), envelope = (the
-- decoded error envelope, or nil), location = (a redirect's target, or nil) }.
--
-- The envelope is judged by core.envelope, the C code behind the curl
-- transport's call, so both transports turn an answer into the same result
-- or the same error.
--
-- Differences from the curl transport, all forced by nginx:
-- * certificates are checked against nginx's lua_ssl_trusted_certificate
--   (and lua_ssl_verify_depth); opts.ca_file/ca_path cannot be honoured
--   per socket, so they raise here rather than be silently ignored;
-- * host names are resolved by nginx's `resolver` directive;
-- * no proxy support (opts.proxy raises);
-- * answers are asked for uncompressed (there is no inflate in pure Lua).

local core = require "bitrix24.core"
local runtime = require "bitrix24.runtime"

local M = {}

local DEFAULT_MAX_RESPONSE = 64 * 1024 * 1024
local MAX_RESPONSE_LIMIT = 1024 * 1024 * 1024
local MAX_SECONDS = 86400
local LINE_READ = 16384       -- bytes per receive while reading lines (the buffer stays small)
local BODY_READ = 65536       -- bytes per receive in a body of known or unbounded size
-- Bounds on header lines (status, headers, chunk sizes, trailers), one and
-- all, the same as the curl transport's (src/answer.h, src/answer.c): a
-- line over 16 KiB is NETWORK_ERROR, header lines over 256 KiB in all
-- RESPONSE_TOO_LARGE, on both.
local MAX_LINE = 16384
local MAX_HEADER_BYTES = 256 * 1024

-- Where ngx_lua lets a request open a cosocket (lua-nginx-module docs,
-- ngx.socket.tcp "context"). Elsewhere (init, init_worker, set, log,
-- header_filter, body_filter, balancer, ...) the call would fail deep
-- inside; we fail early and say why.
local COSOCKET_PHASES = {
  rewrite = true, access = true, content = true, timer = true,
  ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true,
}

local function ngx_api()
  if not runtime.nginx then
    error("bitrix24: the nginx transport needs ngx_lua (OpenResty or nginx with the Lua module)", 3)
  end
  return runtime.ngx
end

local function check_phase(ngx)
  local phase = ngx.get_phase()
  if not COSOCKET_PHASES[phase] then
    error("bitrix24: cannot call Bitrix24 in nginx's " .. phase .. " phase: ngx_lua has no sockets there"
      .. " (only in rewrite, access and content handlers and in ngx.timer callbacks); move the call into"
      .. " one of those, e.g. ngx.timer.at(0, function() ... end)", 0)
  end
end

local function seconds(opts, key, default)
  local v = opts[key]
  if v == nil then return default end
  if type(v) ~= "number" or not (v > 0) or v > MAX_SECONDS then
    error("bitrix24: option '" .. key .. "' must be a number of seconds in (0, " .. MAX_SECONDS .. "]", 3)
  end
  return v
end

local Transport = {}
Transport.__index = Transport

--- T.new(opts): timeout, connect_timeout, user_agent, tls_verify,
--- max_response; ca_file, ca_path and proxy raise (see above).
function M.new(opts)
  opts = opts or {}
  local ngx = ngx_api()
  if opts.proxy ~= nil then
    error("bitrix24: opts.proxy is not supported inside nginx (cosockets connect directly);"
      .. ' reach the portal without a proxy, or use opts.transport = "curl" (it blocks the worker)', 2)
  end
  if opts.ca_file ~= nil or opts.ca_path ~= nil then
    error("bitrix24: opts.ca_file/ca_path do not apply inside nginx: put the CA into the file named by"
      .. " the lua_ssl_trusted_certificate directive instead", 2)
  end
  local max = opts.max_response
  if max == nil then max = DEFAULT_MAX_RESPONSE end
  if type(max) ~= "number" or not (max >= 1) or max > MAX_RESPONSE_LIMIT or max ~= math.floor(max) then
    error("bitrix24: option 'max_response' must be a whole number of bytes in [1, 1 GiB]", 2)
  end
  if opts.user_agent ~= nil and type(opts.user_agent) ~= "string" then
    error("bitrix24: option 'user_agent' must be a string", 2)
  end
  return setmetatable({
    ngx = ngx,
    timeout = seconds(opts, "timeout", 60),
    connect_timeout = seconds(opts, "connect_timeout", 10),
    user_agent = opts.user_agent or "bitrix24-lua",
    verify = opts.tls_verify == nil or opts.tls_verify == true,
    max = math.floor(max),
    open = true,
  }, Transport)
end

function Transport:close()
  -- Connections belong to nginx's per-worker pool, not to this object:
  -- there is nothing to free, only further use to refuse.
  self.open = false
end

Transport.__tostring = function(self)
  return "bitrix24.transport.nginx (" .. (self.open and "open" or "closed") .. ")"
end

---------------------------------------------------------------- URLs

-- scheme, host (brackets stripped), port, Host header value, path+query.
local function parse_url(url)
  local scheme, authority, rest = url:match("^(%a[%w+.-]*)://([^/?#]*)(.*)$")
  if not scheme then return nil end
  scheme = scheme:lower()
  if scheme ~= "http" and scheme ~= "https" then return nil end
  if authority:find("@", 1, true) then return nil end
  local host, port = authority:match("^%[([^%]]+)%]:?(%d*)$")
  if not host then host, port = authority:match("^([^:]+):?(%d*)$") end
  if not host or host == "" then return nil end
  port = tonumber(port) or (scheme == "https" and 443 or 80)
  local path = rest:gsub("#.*$", "")
  if path == "" or path:sub(1, 1) == "?" then path = "/" .. path end
  return scheme, host:lower(), port, authority, path
end

-- The absolute form of a Location header, as libcurl reports it, so the
-- Lua layer can compare origins and follow same-origin redirects.
local function absolute(location, scheme, authority, path)
  if location:match("^%a[%w+.-]*://") then return location end
  if location:sub(1, 2) == "//" then return scheme .. ":" .. location end
  if location:sub(1, 1) == "/" then return scheme .. "://" .. authority .. location end
  local dir = path:gsub("[?#].*$", ""):match("^(.*/)") or "/"
  return scheme .. "://" .. authority .. dir .. location
end

---------------------------------------------------------------- one exchange

-- A failed exchange: the error code, a description, and whether the
-- request may be sent again (a reused connection that died before the
-- first byte of the answer: the server never saw or never answered it).
local function failure(code, description, resendable)
  return { code = code, description = description, resendable = resendable }
end

local function net_code(err)
  return err == "timeout" and "TIMEOUT" or "NETWORK_ERROR"
end

-- Per-operation socket timeouts are what is left of the call's time, so
-- `timeout` bounds the whole call like CURLOPT_TIMEOUT does.
-- deadline: { at = when the call must end, limit = its seconds }.
local function arm(self, sock, deadline)
  local ngx = self.ngx
  ngx.update_time()
  local left = deadline.at - ngx.now()
  if left <= 0 then return false end
  local ms = math.max(1, math.floor(left * 1000))
  sock:settimeouts(math.min(ms, math.floor(self.connect_timeout * 1000)), ms, ms)
  return true
end

local function timed_out(deadline)
  return failure("TIMEOUT", string.format("the call took longer than %g s", deadline.limit))
end

local function too_large(self)
  return failure("RESPONSE_TOO_LARGE", string.format("the answer is larger than max_response (%d bytes)", self.max))
end

-- The answer is read through this buffer with receiveany, never with
-- receive("*l") or receive(n): those grow without limit on a line with no
-- end, and re-arm their timeout with every byte that trickles in, so a
-- dripping server could hold the call for ever. Here every read is bounded
-- in size and armed with what is left of the call's time. Every byte of
-- the answer (headers, chunk lines, trailers, body) counts towards
-- max_response.
local Reader = {}
Reader.__index = Reader

local function reader(self, sock, deadline)
  return setmetatable({ t = self, sock = sock, deadline = deadline, buf = "", used = 0, header_bytes = 0,
    received = 0 }, Reader)
end

-- Up to max more bytes from the socket, or nil, failure (what: for the description).
function Reader:recv(max, what)
  if not arm(self.t, self.sock, self.deadline) then return nil, timed_out(self.deadline) end
  local data, err = self.sock:receiveany(max)
  if not data then
    -- Nothing at all came back: the server may never have seen the request.
    return nil, failure(net_code(err), what .. ": " .. tostring(err), err ~= "timeout" and self.received == 0)
  end
  self.received = self.received + #data
  return data
end

-- Counts n bytes of the answer; a failure once they pass max_response.
function Reader:count(n)
  self.used = self.used + n
  if self.used > self.t.max then return too_large(self.t) end
end

-- One line without its CRLF; header: count it towards the header bytes.
function Reader:line(what, header)
  while true do
    local i = self.buf:find("\n", 1, true)
    if i and i - 1 > MAX_LINE or not i and #self.buf > MAX_LINE then
      return nil, failure("NETWORK_ERROR", string.format("%s: a %sline longer than 16 KiB (%d bytes)",
        what, header and "header " or "", MAX_LINE))
    end
    if i then
      local line = self.buf:sub(1, i - 1):gsub("\r$", "")
      self.buf = self.buf:sub(i + 1)
      if header then
        self.header_bytes = self.header_bytes + i
        if self.header_bytes > MAX_HEADER_BYTES then
          return nil, failure("RESPONSE_TOO_LARGE",
            string.format("the answer's header lines are larger than %d bytes", MAX_HEADER_BYTES))
        end
      end
      local f = self:count(i)
      if f then return nil, f end
      return line
    end
    local data, f = self:recv(LINE_READ, what)
    if not data then return nil, f end
    self.buf = self.buf .. data
  end
end

-- Exactly n bytes (n already counted by the caller).
function Reader:bytes(n, what)
  local parts, have = {}, 0
  if #self.buf > 0 then
    parts[1] = self.buf:sub(1, n)
    self.buf = self.buf:sub(n + 1)
    have = #parts[1]
  end
  while have < n do
    local data, f = self:recv(math.min(BODY_READ, n - have), what)
    if not data then return nil, f end
    parts[#parts + 1] = data
    have = have + #data
  end
  return table.concat(parts)
end

-- Everything up to the server's close.
function Reader:rest(what)
  local parts = { self.buf }
  local f = self:count(#self.buf)
  if f then return nil, f end
  self.buf = ""
  while true do
    if not arm(self.t, self.sock, self.deadline) then return nil, timed_out(self.deadline) end
    local data, err = self.sock:receiveany(BODY_READ)
    if not data then
      if err == "closed" then return table.concat(parts) end
      return nil, failure(net_code(err), what .. ": " .. tostring(err))
    end
    f = self:count(#data)
    if f then return nil, f end
    parts[#parts + 1] = data
  end
end

-- The status line and headers of the final answer; interim 1xx answers
-- (100 Continue, 103 Early Hints) are skipped whole, headers and all.
local function read_headers(r)
  local version, status, headers
  repeat
    local line, f = r:line("reading the answer", true)
    if not line then return nil, f end
    version, status = line:match("^HTTP/(%d%.%d) (%d%d%d)")
    if not version then return nil, failure("NETWORK_ERROR", "not an HTTP answer: " .. line:sub(1, 80)) end
    status = tonumber(status)
    headers = {}
    while true do
      line, f = r:line("reading the answer's headers", true)
      if not line then return nil, f end
      if line == "" then break end
      local name, value = line:match("^([^:]+):%s*(.-)%s*$")
      if name then
        name = name:lower()
        if name == "content-length" and headers[name] then
          -- The same length twice is harmless (libcurl takes it too);
          -- two lengths leave the answer's end unknown.
          if headers[name] ~= value then
            return nil, failure("NETWORK_ERROR", "differing Content-Length headers: " .. headers[name]:sub(1, 40)
              .. ", " .. value:sub(1, 40))
          end
        else
          -- Repeated headers are joined, as HTTP allows for list headers.
          headers[name] = headers[name] and (headers[name] .. ", " .. value) or value
        end
      end
    end
  until status >= 200
  return version, status, headers
end

local function read_chunked(self, r)
  local parts = {}
  while true do
    local line, f = r:line("reading a chunk", false)
    if not line then return nil, f end
    local hex = line:match("^%s*(%x+)")
    -- (more than 15 hex digits would not fit a double exactly, and is far beyond any max_response)
    local n = hex and #hex <= 15 and tonumber(hex, 16)
    if not n then return nil, failure("NETWORK_ERROR", "bad chunk size line: " .. line:sub(1, 40)) end
    if n == 0 then break end
    f = r:count(n)
    if f then return nil, f end
    local data
    data, f = r:bytes(n, "reading a chunk")
    if not data then return nil, f end
    parts[#parts + 1] = data
    line, f = r:line("reading a chunk", false)   -- the CRLF after the chunk
    if not line then return nil, f end
    if line ~= "" then return nil, failure("NETWORK_ERROR", "bad chunk end: " .. line:sub(1, 40)) end
  end
  -- Trailer fields, up to the empty line; we need none of them, but they
  -- count as header lines.
  while true do
    local line, f = r:line("reading the trailer", true)
    if not line then return nil, f end
    if line == "" then return table.concat(parts) end
  end
end

-- Returns status, body, location, keep (the connection may be pooled),
-- or nil, failure.
local function read_answer(self, sock, deadline, method)
  local r = reader(self, sock, deadline)
  local version, status, headers = read_headers(r)
  if not version then return nil, status end
  local connection = (headers["connection"] or ""):lower()
  local keep = (version == "1.1" and not connection:find("close", 1, true))
    or (version == "1.0" and connection:find("keep-alive", 1, true) ~= nil)
  local body, err
  local te = (headers["transfer-encoding"] or ""):lower()
  if method == "HEAD" or status == 204 or status == 304 then
    body = ""
  elseif te ~= "" and te ~= "identity" then
    if not te:match("chunked%s*$") then
      return nil, failure("NETWORK_ERROR", "unsupported Transfer-Encoding: " .. te)
    end
    body, err = read_chunked(self, r)
  elseif headers["content-length"] then
    local n = tonumber(headers["content-length"]:match("^(%d+)$"))
    if not n then return nil, failure("NETWORK_ERROR", "bad Content-Length: " .. headers["content-length"]) end
    err = r:count(n)
    if err then return nil, err end
    body, err = r:bytes(n, "reading the answer")
  else
    keep = false
    body, err = r:rest("reading the answer")
  end
  if not body then return nil, err end
  -- Bytes beyond the answer: the connection is out of step, do not reuse it.
  if #r.buf > 0 then keep = false end
  return status, body, headers["location"], keep
end

local function request_bytes(self, method, authority, path, body)
  local lines = {
    method .. " " .. path .. " HTTP/1.1",
    "Host: " .. authority,
    "User-Agent: " .. self.user_agent,
    "Accept: application/json",
  }
  if body then
    lines[#lines + 1] = "Content-Type: application/json"
    lines[#lines + 1] = "Content-Length: " .. #body
  end
  lines[#lines + 1] = "\r\n"
  return table.concat(lines, "\r\n") .. (body or "")
end

-- One try on one connection. fresh: take a new connection rather than one
-- from the pool (the resend after a pooled connection died).
local function exchange(self, u, method, body, deadline, fresh)
  local ngx = self.ngx
  local sock = ngx.socket.tcp()
  -- One pool per scheme, host, port (and verification mode: a connection
  -- whose certificate was not checked must not serve a client that checks).
  local pool = u.scheme .. "://" .. u.host .. ":" .. u.port .. (self.verify and "" or " noverify")
  if fresh then pool = pool .. " fresh" end   -- never filled: see the end of this function
  if not arm(self, sock, deadline) then return nil, timed_out(deadline) end
  -- localhost is the loopback without asking DNS (RFC 6761, as libcurl
  -- does): nginx would otherwise need a `resolver` even for it.
  local addr = u.host == "localhost" and "127.0.0.1" or u.host
  local ok, err = sock:connect(addr, u.port, { pool = pool })
  if not ok then
    return nil, failure(net_code(err), string.format("connecting to %s:%d failed: %s", u.host, u.port, tostring(err)))
  end
  local reused = (sock:getreusedtimes() or 0) > 0
  if u.scheme == "https" and not reused then
    -- SNI and the host check both use the URL's host name.
    ok, err = sock:sslhandshake(false, u.host, self.verify)
    -- ngx_lua 0.10.23 (Debian 12) can report success for a handshake whose
    -- host check failed, having closed the socket: a closed socket here
    -- means the certificate was refused.
    if ok and not sock:getreusedtimes() then ok, err = nil, "certificate check failed" end
    if not ok then
      sock:close()
      return nil, failure(err == "timeout" and "TIMEOUT" or "TLS_ERROR",
        string.format("TLS handshake with %s:%d failed: %s (inside nginx, certificates are checked against"
          .. " lua_ssl_trusted_certificate, up to lua_ssl_verify_depth)", u.host, u.port, tostring(err)))
    end
  end
  if not arm(self, sock, deadline) then sock:close(); return nil, timed_out(deadline) end
  local sent
  sent, err = sock:send(request_bytes(self, method, u.authority, u.path, body))
  if not sent then
    sock:close()
    return nil, failure(net_code(err), "sending the request: " .. tostring(err), reused and err ~= "timeout")
  end
  local status, rbody, location, keep = read_answer(self, sock, deadline, method)
  if not status then
    sock:close()
    local f = rbody
    f.resendable = f.resendable and reused
    return nil, f
  end
  if keep and not fresh then
    sock:setkeepalive()   -- idle time and pool size: lua_socket_keepalive_timeout, lua_socket_pool_size
  else
    sock:close()
  end
  return status, rbody, location
end

-- Sends once; when a pooled connection turns out to be dead before any
-- byte of the answer (the server closed it while idle), sends once more
-- on a fresh connection, as libcurl does. Both within the call's time:
-- the transport's timeout, or the caller's shorter one. A write (a request
-- not safe to repeat) goes on a fresh connection from the start and is
-- never sent again: the server may have run it before the pooled
-- connection died.
local function perform(self, url, body, timeout, write)
  if not self.open then error("bitrix24: the client is closed", 3) end
  local ngx = self.ngx
  check_phase(ngx)
  local scheme, host, port, authority, path = parse_url(url)
  if not scheme then return nil, failure("NETWORK_ERROR", "not an http(s) URL: " .. tostring(url)) end
  local u = { scheme = scheme, host = host, port = port, authority = authority, path = path }
  ngx.update_time()
  local limit = math.min(self.timeout, timeout or self.timeout)
  local deadline = { at = ngx.now() + limit, limit = limit }
  local method = body and "POST" or "GET"
  local status, rbody, location = exchange(self, u, method, body, deadline, write)
  if not status and rbody.resendable then
    status, rbody, location = exchange(self, u, method, body, deadline, true)
  end
  if not status then return nil, rbody end
  return status, rbody, location, u
end

--- t:call(url, json_body [, timeout [, write]]) -> envelope, status | nil, failure
--- timeout: seconds for this call, when less than the transport's own;
--- write: the request must not be sent twice (see perform).
function Transport:call(url, body, timeout, write)
  if type(url) ~= "string" or type(body) ~= "string" then
    error("bitrix24: call(url, body [, timeout]) takes two strings", 2)
  end
  if timeout ~= nil and (type(timeout) ~= "number" or not (timeout > 0) or timeout > MAX_SECONDS) then
    error("bitrix24: call's timeout must be a number of seconds in (0, " .. MAX_SECONDS .. "]", 2)
  end
  local status, rbody, location, u = perform(self, url, body, timeout, write == true)
  if not status then return nil, { code = rbody.code, description = rbody.description } end
  if status >= 300 and status < 400 then
    return nil, { code = "PORTAL_MOVED", description = "HTTP " .. status .. " redirect", status = status,
      location = location and absolute(location, u.scheme, u.authority, u.path) or nil }
  end
  return core.envelope(status, rbody)
end

--- t:request(url [, body]) -> status, body | nil, failure
function Transport:request(url, body)
  if type(url) ~= "string" or (body ~= nil and type(body) ~= "string") then
    error("bitrix24: request(url [, body]) takes strings", 2)
  end
  -- A token request re-sent would present a refresh token the first one
  -- already rotated: never on a connection that may be stale.
  local status, rbody = perform(self, url, body, nil, true)
  if not status then return nil, { code = rbody.code, description = rbody.description } end
  return status, rbody
end

return M
