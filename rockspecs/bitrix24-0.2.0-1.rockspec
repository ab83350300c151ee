rockspec_format = "3.0"
package = "bitrix24"
version = "0.2.0-1"
-- The release's tag. `luarocks make` from a checkout builds the checkout
-- and never reads source.url.
source = {
  url = "git+https://github.com/bitrix24-lua/bitrix24-lua.git",
  tag = "v0.2.0",
}
description = {
  summary = "Bitrix24 REST client: a libcurl C core under a thin Lua API",
  detailed = [[
Calls Bitrix24 REST methods (webhook or OAuth) from Lua 5.1-5.4 and LuaJIT,
returning results as Lua tables with integers kept as integers. The fake
portal the specs run against is its own rock, bitrix24-fake. The Redis
budget and token store load a Redis client only when used: redis-lua in
plain Lua, lua-resty-redis inside nginx.]],
  homepage = "https://github.com/bitrix24-lua/bitrix24-lua",
  license = "MIT",
}
dependencies = {
  "lua >= 5.1",
  "lua-cjson",
}
external_dependencies = {
  -- Debian keeps curl/curl.h under a multiarch directory that a header
  -- check does not search, so only the library is checked.
  CURL = { library = "curl" },
}
-- `luarocks test` runs the specs with busted from a checkout whose core is
-- built (`make LUA_VERSION=5.4`: .busted loads build/<version>/). The specs
-- start the fake portal from the checkout, so they also need what the
-- bitrix24-fake rock needs: luasocket and nginx with the Lua module.
test = {
  type = "busted",
  flags = { "--exclude-tags=slow" },
}
-- Built by the Makefile (make rock), not by the builtin type: builtin also
-- copies all of lua/, which holds the fake portal (the bitrix24-fake rock).
build = {
  type = "make",
  build_target = "rock",
  build_variables = {
    CC = "$(CC)",
    CFLAGS = "$(CFLAGS)",
    LIBFLAG = "$(LIBFLAG)",
    LUA_CFLAGS = "-I$(LUA_INCDIR)",
    CURL_CFLAGS = "-I$(CURL_INCDIR)",
    CURL_LIBS = "-L$(CURL_LIBDIR) -lcurl",
  },
  install_pass = false,
  install = {
    lua = {
      ["bitrix24"] = "lua/bitrix24.lua",
      ["bitrix24.errors"] = "lua/bitrix24/errors.lua",
      ["bitrix24.methods"] = "lua/bitrix24/methods.lua",
      ["bitrix24.batch"] = "lua/bitrix24/batch.lua",
      ["bitrix24.paging"] = "lua/bitrix24/paging.lua",
      ["bitrix24.cli"] = "lua/bitrix24/cli.lua",
      ["bitrix24.auth"] = "lua/bitrix24/auth.lua",
      ["bitrix24.limiter"] = "lua/bitrix24/limiter.lua",
      ["bitrix24.store"] = "lua/bitrix24/store.lua",
      ["bitrix24.runtime"] = "lua/bitrix24/runtime.lua",
      ["bitrix24.pipeline"] = "lua/bitrix24/pipeline.lua",
      ["bitrix24.fanout"] = "lua/bitrix24/fanout.lua",
      ["bitrix24.transport.nginx"] = "lua/bitrix24/transport/nginx.lua",
      ["bitrix24.redis"] = "lua/bitrix24/redis.lua",
      ["bitrix24.redis_budget"] = "lua/bitrix24/redis_budget.lua",
      ["bitrix24.redis_store"] = "lua/bitrix24/redis_store.lua",
      ["bitrix24.events"] = "lua/bitrix24/events.lua",
      ["bitrix24.events.parse"] = "lua/bitrix24/events/parse.lua",
      ["bitrix24.events.binding"] = "lua/bitrix24/events/binding.lua",
      ["bitrix24.events.offline"] = "lua/bitrix24/events/offline.lua",
      ["bitrix24.events.install"] = "lua/bitrix24/events/install.lua",
    },
    lib = {
      ["bitrix24.core"] = "build/rock/bitrix24/core.so",
    },
    bin = {
      ["b24"] = "bin/b24",
    },
  },
}
