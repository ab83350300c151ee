-- In-process specs for the fake portal's events (bitrix24.fake.events):
-- bindings, the form bodies it fires, and the offline queue's rules
-- (FACTS §12.4), driven through portal:handle(req) with no network.

local Portal = require "bitrix24.fake.portal"
local json = require "bitrix24.fake.json"
local parse = require("bitrix24.events").parse

local CODE = "testcode0123abcd"

local function new_portal()
  local clock = { t = 1700000000 }
  return Portal.new { code = CODE, rate = 0, clock = function() return clock.t end }, clock
end

local function send(p, path, body)
  local res = p:handle { method = "POST", path = path, query = "", headers = { ["content-type"] = "application/json" },
    body = json.encode(body or {}), conn = 1, base_url = "http://127.0.0.1:8080" }
  return res.status, json.decode(res.body or "")
end

local function app(p, method, body)
  body = body or {}
  body.auth = p.access_token
  return send(p, "/rest/" .. method, body)
end

local function ids_of(d)
  local out = {}
  for i, e in ipairs(d.result.events) do out[i] = tonumber(e.EVENT_DATA.FIELDS.ID) end
  table.sort(out)
  return out
end

describe("fake portal events", function()
  it("refuses event methods to a webhook, and binds for an application", function()
    local p = new_portal()
    local status, d = send(p, "/rest/1/" .. CODE .. "/event.bind.json",
      { event = "ONCRMLEADADD", handler = "http://h/" })
    assert.equal(401, status)
    assert.equal("WRONG_AUTH_TYPE", d.error)
    status = app(p, "event.bind", { event = "ONCRMLEADADD", handler = "http://h/" })
    assert.equal(200, status)
    assert.equal(0, #p.event_outbox)
    app(p, "crm.lead.add", { fields = { TITLE = "x" } })
    assert.equal(1, #p.event_outbox)
  end)

  it("fires a PHP-style form with the application token and member_id that events.parse reads back", function()
    local p = new_portal()
    app(p, "event.bind", { event = "ONCRMLEADUPDATE", handler = "http://h/x" })
    app(p, "crm.lead.update", { id = 1, fields = { TITLE = "t" } })
    local item = p.event_outbox[1]
    assert.equal("http://h/x", item.url)
    assert.matches("data%%5BFIELDS%%5D%%5BID%%5D=1", item.body)
    local ev = assert(parse(item.body))
    assert.equal("ONCRMLEADUPDATE", ev.event)
    assert.equal("1", ev.data.FIELDS.ID)
    assert.equal(p.application_token, ev.auth.application_token)
    assert.equal(p.member_id, ev.auth.member_id)
    assert.equal("127.0.0.1:8080", ev.auth.domain)
    assert.equal("http://127.0.0.1:8080/rest/", ev.auth.client_endpoint)
  end)

  it("queues the current state, not history, and reserves batches that do not overlap", function()
    local p, clock = new_portal()
    app(p, "event.bind", { event = "ONCRMLEADUPDATE", event_type = "offline" })
    for _ = 1, 3 do
      for id = 1, 5 do
        clock.t = clock.t + 1
        app(p, "crm.lead.update", { id = id, fields = { TITLE = "v" } })
      end
    end
    local _, list = app(p, "event.offline.list")
    assert.equal(5, #list.result)
    local _, a = app(p, "event.offline.get", { clear = 0, limit = 2 })
    local _, b = app(p, "event.offline.get", { clear = 0, limit = 2 })
    assert.same({ 1, 2 }, ids_of(a))
    assert.same({ 3, 4 }, ids_of(b))
    assert.are_not.equal(a.result.process_id, b.result.process_id)
    -- A change to a reserved record makes a new record; the reserved one stays.
    app(p, "crm.lead.update", { id = 1, fields = { TITLE = "w" } })
    _, list = app(p, "event.offline.list")
    assert.equal(6, #list.result)
    -- The same process_id gets its own records back.
    local _, again = app(p, "event.offline.get", { clear = 0, limit = 2, process_id = a.result.process_id })
    assert.same({ 1, 2 }, ids_of(again))
    -- clear by id removes only those; error marks and hides.
    app(p, "event.offline.clear", { process_id = a.result.process_id, id = { a.result.events[1].ID } })
    app(p, "event.offline.error", { process_id = a.result.process_id, message_id = { a.result.events[2].MESSAGE_ID } })
    _, list = app(p, "event.offline.list", { filter = { ERROR = "1" } })
    assert.equal(1, #list.result)
    assert.equal(a.result.events[2].ID, list.result[1].ID)
    local _, mine = app(p, "event.offline.get", { clear = 0, process_id = a.result.process_id })
    assert.same({ 1, 5 }, ids_of(mine))   -- the free ones (5, and 1's new record), not the error
    -- clear=1 (the default) deletes what it returns.
    local _, gone = app(p, "event.offline.get", { limit = 50 })
    _, list = app(p, "event.offline.list")
    for _, r in ipairs(list.result) do
      for _, e in ipairs(gone.result.events) do assert.are_not.equal(e.ID, r.ID) end
    end
  end)

  it("answers an empty queue with a null process_id", function()
    local p = new_portal()
    local _, d = app(p, "event.offline.get", { clear = 0 })
    assert.equal(json.null, d.result.process_id)
    assert.same({}, d.result.events)
  end)
end)
