-- A write is never sent twice by our choice, not even by libcurl's: when a
-- reused keep-alive connection closes before any byte of the answer,
-- libcurl sends the request again on a fresh connection. spec/once_server.lua
-- (a child process) answers the first request of a connection and keeps
-- that connection alive, then reads a later request, and any write, whole
-- and closes without a word; it logs each request line it read.
-- (spec/send_once_spec.lua has the same for the nginx transport and for
-- token requests.)

local support = require "support"
local bitrix24 = require "bitrix24"
local child = require "child_server"

describe("a write on a keep-alive connection the server drops", function()
  local server

  setup(function() server = child.start("once_server.lua", 20) end)
  teardown(function() child.stop(server) end)

  it("is sent once, and the call returns NETWORK_ERROR", function()
    local client = bitrix24.webhook(server.base .. "/rest/1/secretcode1234/",
      support.opts { retry_writes = false, tries = 1 })
    -- A read first: answered, so the connection is kept alive.
    assert(client:call("crm.lead.contact.items.get", { id = 1 }))
    local result, err = client:call("crm.lead.contact.add", { id = 1, fields = { CONTACT_ID = 5 } })
    client:close()
    assert.is_nil(result)
    assert.equal("NETWORK_ERROR", err.code)
    local writes = 0
    for line in child.log(server):gmatch("[^\n]+") do
      if line:find("crm.lead.contact.add", 1, true) then writes = writes + 1 end
    end
    assert.equal(1, writes, "the server saw the write " .. writes .. " times")
  end)
end)
