rockspec_format = "3.0"
package = "bitrix24-fake"
version = "scm-1"
-- The same repository as the bitrix24 rock; `luarocks make` from a
-- checkout builds the checkout and never reads source.url.
source = {
  url = "git+https://github.com/bitrix24-lua/bitrix24-lua.git",
  branch = "main",
}
description = {
  summary = "A fake Bitrix24 portal in nginx, for testing Bitrix24 REST clients",
  detailed = [[
Serves the REST methods the bitrix24 client needs (webhook and OAuth,
batch, lists, rate limits, injected faults) from a real nginx on
127.0.0.1: bitrix24.fake.server starts and stops it from Lua, and the
b24-fake-portal command runs one from the shell.

Needs, besides the rocks below, an nginx with the Lua module (ngx_lua, as
Debian's nginx-light with libnginx-mod-http-lua, or OpenResty) and the
openssl command for its TLS certificate; neither is a rock.]],
  homepage = "https://github.com/bitrix24-lua/bitrix24-lua",
  license = "MIT",
}
dependencies = {
  "lua >= 5.1",
  "bitrix24 scm",
  "lua-cjson",
  "luasocket",
}
-- Plain Lua files, copied: nothing to build.
build = {
  type = "none",
  install = {
    lua = {
      ["bitrix24.fake.answers"] = "lua/bitrix24/fake/answers.lua",
      ["bitrix24.fake.batch"] = "lua/bitrix24/fake/batch.lua",
      ["bitrix24.fake.churn"] = "lua/bitrix24/fake/churn.lua",
      ["bitrix24.fake.control"] = "lua/bitrix24/fake/control.lua",
      ["bitrix24.fake.data"] = "lua/bitrix24/fake/data.lua",
      ["bitrix24.fake.deliver"] = "lua/bitrix24/fake/deliver.lua",
      ["bitrix24.fake.events"] = "lua/bitrix24/fake/events.lua",
      ["bitrix24.fake.faults"] = "lua/bitrix24/fake/faults.lua",
      ["bitrix24.fake.json"] = "lua/bitrix24/fake/json.lua",
      ["bitrix24.fake.lead_contact"] = "lua/bitrix24/fake/lead_contact.lua",
      ["bitrix24.fake.limits"] = "lua/bitrix24/fake/limits.lua",
      ["bitrix24.fake.lists"] = "lua/bitrix24/fake/lists.lua",
      ["bitrix24.fake.nginx"] = "lua/bitrix24/fake/nginx.lua",
      ["bitrix24.fake.oauth"] = "lua/bitrix24/fake/oauth.lua",
      ["bitrix24.fake.php"] = "lua/bitrix24/fake/php.lua",
      ["bitrix24.fake.portal"] = "lua/bitrix24/fake/portal.lua",
      ["bitrix24.fake.records"] = "lua/bitrix24/fake/records.lua",
      ["bitrix24.fake.server"] = "lua/bitrix24/fake/server.lua",
    },
    bin = {
      ["b24-fake-portal"] = "bin/b24-fake-portal",
    },
  },
}
