rockspec_format = "3.0"
package = "bitrix24"
version = "scm-1"
source = {
  url = "git+file:///dev/null",
}
description = {
  summary = "Bitrix24 REST client: a libcurl C core under a thin Lua API",
  detailed = [[
Calls Bitrix24 REST methods (webhook or OAuth) from Lua 5.1-5.4 and LuaJIT,
returning results as Lua tables with integers kept as integers. Ships a fake
Bitrix24 portal for tests.]],
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
build = {
  type = "builtin",
  modules = {
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
    ["bitrix24.redis"] = "lua/bitrix24/redis.lua",
    ["bitrix24.redis_budget"] = "lua/bitrix24/redis_budget.lua",
    ["bitrix24.redis_store"] = "lua/bitrix24/redis_store.lua",
    ["bitrix24.pipeline"] = "lua/bitrix24/pipeline.lua",
    ["bitrix24.fanout"] = "lua/bitrix24/fanout.lua",
    ["bitrix24.transport.nginx"] = "lua/bitrix24/transport/nginx.lua",
    ["bitrix24.events"] = "lua/bitrix24/events.lua",
    ["bitrix24.events.parse"] = "lua/bitrix24/events/parse.lua",
    ["bitrix24.events.binding"] = "lua/bitrix24/events/binding.lua",
    ["bitrix24.events.offline"] = "lua/bitrix24/events/offline.lua",
    ["bitrix24.events.install"] = "lua/bitrix24/events/install.lua",
    ["bitrix24.fake.portal"] = "lua/bitrix24/fake/portal.lua",
    ["bitrix24.fake.php"] = "lua/bitrix24/fake/php.lua",
    ["bitrix24.fake.answers"] = "lua/bitrix24/fake/answers.lua",
    ["bitrix24.fake.records"] = "lua/bitrix24/fake/records.lua",
    ["bitrix24.fake.limits"] = "lua/bitrix24/fake/limits.lua",
    ["bitrix24.fake.faults"] = "lua/bitrix24/fake/faults.lua",
    ["bitrix24.fake.churn"] = "lua/bitrix24/fake/churn.lua",
    ["bitrix24.fake.oauth"] = "lua/bitrix24/fake/oauth.lua",
    ["bitrix24.fake.lead_contact"] = "lua/bitrix24/fake/lead_contact.lua",
    ["bitrix24.fake.lists"] = "lua/bitrix24/fake/lists.lua",
    ["bitrix24.fake.batch"] = "lua/bitrix24/fake/batch.lua",
    ["bitrix24.fake.control"] = "lua/bitrix24/fake/control.lua",
    ["bitrix24.fake.json"] = "lua/bitrix24/fake/json.lua",
    ["bitrix24.fake.data"] = "lua/bitrix24/fake/data.lua",
    ["bitrix24.fake.nginx"] = "lua/bitrix24/fake/nginx.lua",
    ["bitrix24.fake.server"] = "lua/bitrix24/fake/server.lua",
    ["bitrix24.fake.events"] = "lua/bitrix24/fake/events.lua",
    ["bitrix24.fake.deliver"] = "lua/bitrix24/fake/deliver.lua",
    ["bitrix24.core"] = {
      sources = { "src/core.c", "src/envelope.c", "src/failure.c", "src/http.c", "src/answer.c", "src/multi.c", "src/query.c", "src/system.c", "src/buffer.c", "src/json.c", "src/values.c" },
      libraries = { "curl", "pthread" },
      libdirs = { "$(CURL_LIBDIR)" },
      incdirs = { "$(CURL_INCDIR)" },
    },
  },
  install = {
    bin = {
      ["b24"] = "bin/b24",
      ["b24-fake-portal"] = "bin/b24-fake-portal",
    },
  },
}
