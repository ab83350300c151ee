-- In-process specs for the fake Bitrix24 portal logic (no network):
-- they drive portal:handle(req) and check bodies against FACTS.md.

local Portal = require "bitrix24.fake.portal"
local json = require "bitrix24.fake.json"
local default_data = require "bitrix24.fake.data"

local CODE = "testcode0123abcd"
local T0 = 1700000000.5 -- fixed fake clock start

local function new_portal(opts)
  local clock = { t = T0 }
  opts = opts or {}
  opts.code = opts.code or CODE
  opts.clock = function() return clock.t end
  return Portal.new(opts), clock
end

-- Send a request. A table body goes as JSON, a string body as a form.
local function send(p, path, body, o)
  o = o or {}
  local headers = o.headers or {}
  local raw = ""
  if type(body) == "table" then
    raw = json.encode(body)
    headers["content-type"] = headers["content-type"] or "application/json"
  elseif type(body) == "string" then
    raw = body
    headers["content-type"] = headers["content-type"] or "application/x-www-form-urlencoded"
  end
  local res = p:handle {
    method = o.method or "POST", path = path, query = o.query or "", headers = headers,
    body = raw, conn = o.conn or 1, base_url = "http://127.0.0.1:8080",
  }
  return res, json.decode(res.body or "")
end

local function hook(p, method, body, o)
  return send(p, "/rest/1/" .. CODE .. "/" .. method .. ".json", body, o)
end

local function oauth(p, method, body, o)
  return send(p, "/rest/" .. method, body, o)
end

local function contacts_of(p, id)
  local _, d = hook(p, "crm.lead.contact.items.get", { id = id })
  local out = {}
  for i, b in ipairs(d.result) do
    out[i] = { b.CONTACT_ID, b.SORT, b.IS_PRIMARY }
  end
  return out
end

local function is_int(v)
  if math.type then return math.type(v) == "integer" end
  return type(v) == "number" and v == math.floor(v)
end

describe("json (PHP json_encode emulation)", function()
  it("encodes sequences as arrays and empty tables as []", function()
    assert.equal("[1,2,3]", json.encode({ 1, 2, 3 }))
    assert.equal("[]", json.encode({}))
    assert.equal("{}", json.encode(json.object()))
    assert.equal('{"a":1}', json.encode({ a = 1 }))
  end)

  it("encodes ordered maps in insertion order, keys 0..n-1 as arrays", function()
    local m = json.omap()
    json.set(m, "b", 1); json.set(m, "a", 2)
    assert.equal('{"b":1,"a":2}', json.encode(m))
    local l = json.omap()
    json.set(l, "0", "x"); json.set(l, "1", "y")
    assert.equal('["x","y"]', json.encode(l))
    local gap = json.omap()
    json.set(gap, "1", "x"); json.set(gap, "0", "y")
    assert.equal('{"1":"x","0":"y"}', json.encode(gap))
  end)

  it("writes integers without .0 and floats PHP-like", function()
    assert.equal("42", json.encode(42))
    assert.equal("0.1", json.encode(0.1))
    assert.equal("1773231773.25", json.encode(1773231773.25))
    assert.equal("1.0e+25", json.encode(1e25))
    if math.type then assert.equal("1.0", json.encode(1.0)) end
  end)

  it("escapes quotes, backslashes and control characters, leaves / alone", function()
    assert.equal([["a\"b\\c\n\u0001/"]], json.encode('a"b\\c\n\1/'))
  end)

  it("decodes with key order, integral numbers as integers, and rejects garbage", function()
    local v = json.decode('{"z":1,"a":[2.0,"\\u00e9"],"n":null}')
    assert.same({ "z", "a", "n" }, (json.keys(v)))
    assert.is_true(is_int(v.a[1]))
    assert.equal("\195\169", v.a[2])
    assert.equal(json.null, v.n)
    assert.is_nil(json.decode("{bad"))
    assert.is_nil(json.decode('{"a":1} x'))
  end)
end)

describe("default data", function()
  local d = default_data()
  local leads, contacts = {}, {}
  for _, l in ipairs(d.leads) do leads[l.ID] = l end
  for _, c in ipairs(d.contacts) do contacts[c.ID] = c end

  it("has 247 leads with gaps and 300 contacts", function()
    assert.equal(247, #d.leads)
    assert.equal(300, #d.contacts)
    assert.is_nil(leads[17])
    assert.is_not_nil(leads[1000])
    for i = 2, #d.leads do assert.is_true(d.leads[i].ID > d.leads[i - 1].ID) end
  end)

  it("binds lead 1 like the docs' example and lead 2 to nothing", function()
    assert.same({ CONTACT_ID = 1010, SORT = 10, ROLE_ID = 0, IS_PRIMARY = "Y" }, leads[1].contacts[1])
    assert.same({ CONTACT_ID = 1011, SORT = 20, ROLE_ID = 0, IS_PRIMARY = "N" }, leads[1].contacts[2])
    assert.equal(0, #leads[2].contacts)
  end)

  it("restricts lead 13 (no read) and lead 14 (read only)", function()
    assert.equal("none", leads[13].access)
    assert.equal("read", leads[14].access)
    assert.equal("none", contacts[1300].access)
  end)

  it("builds a fresh table per call", function()
    d.leads[1].contacts = {}
    assert.equal(2, #default_data().leads[1].contacts)
  end)
end)

describe("routing and auth", function()
  local p
  before_each(function() p = new_portal() end)

  it("answers a webhook call with result and time", function()
    local res, d = hook(p, "crm.lead.contact.items.get", { id = 1 })
    assert.equal(200, res.status)
    assert.equal("application/json; charset=utf-8", res.headers["Content-Type"])
    assert.equal(1010, d.result[1].CONTACT_ID)
    assert.is_table(d.time)
  end)

  it("accepts the method without .json, in any case, with ID or id", function()
    local _, d = send(p, "/rest/1/" .. CODE .. "/CRM.Lead.Contact.Items.Get", { ID = 1 })
    assert.equal(2, #d.result)
  end)

  it("rejects a wrong webhook code or user with 401 NO_AUTH_FOUND", function()
    for _, path in ipairs({ "/rest/1/wrong/crm.lead.contact.items.get", "/rest/2/" .. CODE .. "/crm.lead.contact.items.get" }) do
      local res = send(p, path, { id = 1 })
      assert.equal(401, res.status)
      assert.equal('{"error":"NO_AUTH_FOUND","error_description":"Wrong authorization data"}', res.body)
    end
  end)

  it("takes the OAuth token from auth, access_token or a Bearer header", function()
    local tok = p:info().access_token
    assert.equal(200, (oauth(p, "crm.lead.contact.items.get", { id = 1, auth = tok })).status)
    assert.equal(200, (oauth(p, "crm.lead.contact.items.get", { id = 1, access_token = tok })).status)
    assert.equal(200, (oauth(p, "crm.lead.contact.items.get", nil, { query = "id=1&auth=" .. tok })).status)
    assert.equal(200, (oauth(p, "crm.lead.contact.items.get", { id = 1 },
      { headers = { authorization = "Bearer " .. tok } })).status)
  end)

  it("answers missing, unknown and expired OAuth tokens with 401", function()
    local res, d = oauth(p, "crm.lead.contact.items.get", { id = 1 })
    assert.equal(401, res.status)
    assert.equal("NO_AUTH_FOUND", d.error)
    res, d = oauth(p, "crm.lead.contact.items.get", { id = 1, auth = "nope" })
    assert.equal(401, res.status)
    assert.equal("invalid_token", d.error)
    p:expire_tokens()
    res = oauth(p, "crm.lead.contact.items.get", { id = 1, auth = p:info().access_token })
    assert.equal(401, res.status)
    assert.equal('{"error":"expired_token","error_description":"The access token provided has expired."}', res.body)
  end)

  it("expires OAuth tokens after token_ttl seconds", function()
    local clock
    p, clock = new_portal({ token_ttl = 100 })
    local tok = p:info().access_token
    clock.t = T0 + 100
    assert.equal(200, (oauth(p, "crm.lead.contact.items.get", { id = 1, auth = tok })).status)
    clock.t = T0 + 101
    local _, d = oauth(p, "crm.lead.contact.items.get", { id = 1, auth = tok })
    assert.equal("expired_token", d.error)
  end)

  it("answers an unknown method with 404 ERROR_METHOD_NOT_FOUND", function()
    local res, d = hook(p, "crm.lead.contact.foo", { id = 1 })
    assert.equal(404, res.status)
    assert.equal("ERROR_METHOD_NOT_FOUND", d.error)
    assert.equal("Method not found!", d.error_description)
  end)

  it("answers .xml with 400 (JSON only)", function()
    local res = send(p, "/rest/1/" .. CODE .. "/crm.lead.contact.fields.xml")
    assert.equal(400, res.status)
  end)

  it("merges query and body, body keys winning", function()
    local _, d = hook(p, "crm.lead.contact.items.get", { id = 1 }, { query = "id=2" })
    assert.equal(2, #d.result)
  end)

  it("treats invalid JSON as an empty body", function()
    local res, d = hook(p, "crm.lead.contact.items.get", "{id:1", { headers = { ["content-type"] = "application/json" } })
    assert.equal(400, res.status)
    assert.equal("", d.error)
    assert.equal("The parameter ownerEntityID is invalid or not defined.", d.error_description)
  end)

  it("parses PHP-style form keys", function()
    local res = hook(p, "crm.lead.contact.add", "id=2&fields%5BCONTACT_ID%5D=1005&fields[SORT]=30")
    assert.equal(200, res.status)
    assert.same({ { 1005, 30, "N" } }, contacts_of(p, 2))
    local f = Portal.parse_form("a[]=x&a[]=y&b[c][0][d]=1+2%26")
    assert.equal('{"a":["x","y"],"b":{"c":[{"d":"1 2&"}]}}', json.encode(f))
  end)
end)

describe("OAuth token endpoint", function()
  local p, info
  before_each(function()
    p = new_portal()
    info = p:info()
  end)

  local function refresh(rt, secret)
    return send(p, "/oauth/token/", nil, { method = "GET",
      query = "grant_type=refresh_token&client_id=" .. info.client_id .. "&client_secret=" ..
        (secret or info.client_secret) .. "&refresh_token=" .. rt })
  end

  it("rotates the pair and answers the documented fields", function()
    local res, d = refresh(info.refresh_token)
    assert.equal(200, res.status)
    assert.not_equal(info.access_token, d.access_token)
    assert.not_equal(info.refresh_token, d.refresh_token)
    assert.equal(3600, d.expires_in)
    assert.equal(math.floor(T0) + 3600, d.expires)
    assert.equal("http://127.0.0.1:8080/rest/", d.client_endpoint)
    assert.equal("oauth.bitrix.info", d.domain)
    assert.equal(info.member_id, d.member_id)
    assert.equal("crm", d.scope)
    assert.equal("L", d.status)
    assert.equal(1, d.user_id)
    assert.equal(d.access_token, p:info().access_token)
    assert.equal(200, (oauth(p, "crm.lead.contact.items.get", { id = 1, auth = d.access_token })).status)
    local res2, d2 = refresh(info.refresh_token) -- the old refresh token is gone
    assert.equal(400, res2.status)
    assert.equal("invalid_grant", d2.error)
  end)

  it("accepts a POSTed form too", function()
    local res = send(p, "/oauth/token/", "grant_type=refresh_token&client_id=" .. info.client_id ..
      "&client_secret=" .. info.client_secret .. "&refresh_token=" .. info.refresh_token)
    assert.equal(200, res.status)
  end)

  it("answers invalid_client, invalid_grant and invalid_request", function()
    local _, d = refresh(info.refresh_token, "badsecret")
    assert.equal("invalid_client", d.error)
    _, d = refresh("unknown")
    assert.equal("invalid_grant", d.error)
    _, d = send(p, "/oauth/token/", nil, { method = "GET", query = "grant_type=refresh_token" })
    assert.equal("invalid_request", d.error)
  end)
end)

describe("crm.lead.contact.*", function()
  local p
  before_each(function() p = new_portal() end)

  it("fields: the documented object", function()
    local _, d = hook(p, "crm.lead.contact.fields")
    assert.same({ "SORT", "IS_PRIMARY", "CONTACT_ID" }, (json.keys(d.result)))
    assert.equal("char", d.result.IS_PRIMARY.type)
    assert.is_true(d.result.CONTACT_ID.isRequired)
    assert.is_false(d.result.SORT.isRequired)
    assert.equal("Contact", d.result.CONTACT_ID.title)
  end)

  it("items.get: integers and Y/N strings, ordered by SORT", function()
    local res, d = hook(p, "crm.lead.contact.items.get", { id = 1 })
    assert.matches('^{"result":%[{"CONTACT_ID":1010,"SORT":10,"ROLE_ID":0,"IS_PRIMARY":"Y"},'
      .. '{"CONTACT_ID":1011,"SORT":20,"ROLE_ID":0,"IS_PRIMARY":"N"}%],"time":{', res.body)
    assert.is_nil(d.total)
    assert.is_nil(d.next)
    hook(p, "crm.lead.contact.add", { id = 1, fields = { CONTACT_ID = 1020, SORT = 5 } })
    assert.same({ { 1020, 5, "N" }, { 1010, 10, "Y" }, { 1011, 20, "N" } }, contacts_of(p, 1))
  end)

  it("items.get: [] for no contacts and for a lead that does not exist", function()
    assert.matches('^{"result":%[%],', (hook(p, "crm.lead.contact.items.get", { id = 2 })).body)
    assert.matches('^{"result":%[%],', (hook(p, "crm.lead.contact.items.get", { id = 99 })).body)
  end)

  it("rejects a missing or non-positive id with 400 and an empty error code", function()
    for _, body in ipairs({ {}, { id = 0 }, { id = -5 }, { id = "abc" } }) do
      local res = hook(p, "crm.lead.contact.items.get", body)
      assert.equal(400, res.status)
      assert.equal('{"error":"","error_description":"The parameter ownerEntityID is invalid or not defined."}', res.body)
    end
  end)

  it("denies lead 13 (no read) and changes of lead 14 with 403 ACCESS_DENIED", function()
    local denied = '{"error":"ACCESS_DENIED","error_description":"Access denied!"}'
    local res = hook(p, "crm.lead.contact.items.get", { id = 13 })
    assert.equal(403, res.status)
    assert.equal(denied, res.body)
    assert.equal(200, (hook(p, "crm.lead.contact.items.get", { id = 14 })).status)
    for _, m in ipairs({ "crm.lead.contact.add", "crm.lead.contact.delete", "crm.lead.contact.items.set",
      "crm.lead.contact.items.delete" }) do
      res = hook(p, m, { id = 14, fields = { CONTACT_ID = 1001 }, items = { { CONTACT_ID = 1001 } } })
      assert.equal(403, res.status)
      assert.equal(denied, res.body)
    end
  end)

  it("add: defaults SORT 10 and IS_PRIMARY N; already bound gives false", function()
    local res, d = hook(p, "crm.lead.contact.add", { id = 2, fields = { CONTACT_ID = 1005 } })
    assert.equal(200, res.status)
    assert.is_true(d.result)
    assert.same({ { 1005, 10, "N" } }, contacts_of(p, 2))
    res, d = hook(p, "crm.lead.contact.add", { id = 2, fields = { CONTACT_ID = 1005 } })
    assert.equal(200, res.status)
    assert.is_false(d.result)
  end)

  it("add: only the string Y makes a primary, which demotes the others", function()
    hook(p, "crm.lead.contact.add", { id = 1, fields = { CONTACT_ID = 1020, IS_PRIMARY = true, SORT = 30 } })
    hook(p, "crm.lead.contact.add", { id = 1, fields = { CONTACT_ID = 1021, IS_PRIMARY = 1, SORT = 40 } })
    assert.same({ { 1010, 10, "Y" }, { 1011, 20, "N" }, { 1020, 30, "N" }, { 1021, 40, "N" } }, contacts_of(p, 1))
    hook(p, "crm.lead.contact.add", "id=1&fields[CONTACT_ID]=1022&fields[IS_PRIMARY]=Y&fields[SORT]=50")
    assert.same({ { 1010, 10, "N" }, { 1011, 20, "N" }, { 1020, 30, "N" }, { 1021, 40, "N" }, { 1022, 50, "Y" } },
      contacts_of(p, 1))
  end)

  it("add/delete/items.set: a lead that does not exist is 400 Not found.", function()
    for _, m in ipairs({ "crm.lead.contact.add", "crm.lead.contact.delete", "crm.lead.contact.items.set" }) do
      local res = hook(p, m, { id = 99, fields = { CONTACT_ID = 1001 }, items = {} })
      assert.equal(400, res.status)
      assert.equal('{"error":"","error_description":"Not found."}', res.body)
    end
  end)

  it("add/delete: bad fields are 400 with an empty code", function()
    local res, d = hook(p, "crm.lead.contact.add", { id = 1, fields = { CONTACT_ID = 0 } })
    assert.equal(400, res.status)
    assert.equal("", d.error)
    assert.equal("The parameter 'fields' is not valid.", d.error_description)
    res, d = hook(p, "crm.lead.contact.delete", { id = 1, fields = { contact_id = 1010 } }) -- keys are case-sensitive
    assert.equal("The parameter 'fields' is not valid.", d.error_description)
    res, d = hook(p, "crm.lead.contact.add", { id = 1 })
    assert.equal(400, res.status)
    assert.equal("The parameter 'fields' must be array.", d.error_description)
  end)

  it("add: an unknown or unreadable contact is 400 [Contact #N] ...", function()
    for _, cid in ipairs({ 5, 1300 }) do
      local res, d = hook(p, "crm.lead.contact.add", { id = 1, fields = { CONTACT_ID = cid } })
      assert.equal(400, res.status)
      assert.equal("", d.error)
      assert.matches("^%[Contact #" .. cid .. "%]", d.error_description)
    end
  end)

  it("delete: true when bound, false when not", function()
    local _, d = hook(p, "crm.lead.contact.delete", { id = 1, fields = { CONTACT_ID = 1011 } })
    assert.is_true(d.result)
    _, d = hook(p, "crm.lead.contact.delete", { id = 1, fields = { CONTACT_ID = 1011 } })
    assert.is_false(d.result)
    assert.same({ { 1010, 10, "Y" } }, contacts_of(p, 1))
  end)

  it("items.set: replaces the set, skips bad items, first Y wins, default SORT", function()
    local _, d = hook(p, "crm.lead.contact.items.set", { id = 1, items = {
      { CONTACT_ID = 1030, IS_PRIMARY = "N" },
      { CONTACT_ID = 0 },
      { SORT = 5 },
      { CONTACT_ID = 1031, IS_PRIMARY = "Y", SORT = 100 },
      { CONTACT_ID = 1032, IS_PRIMARY = "Y" },
    } })
    assert.is_true(d.result)
    assert.same({ { 1030, 10, "N" }, { 1032, 50, "N" }, { 1031, 100, "Y" } }, contacts_of(p, 1))
  end)

  it("items.set: with no Y the first item becomes primary; [] clears", function()
    hook(p, "crm.lead.contact.items.set", "id=2&items[0][CONTACT_ID]=1040&items[1][CONTACT_ID]=1041")
    assert.same({ { 1040, 10, "Y" }, { 1041, 20, "N" } }, contacts_of(p, 2))
    hook(p, "crm.lead.contact.items.set", { id = 2, items = {} })
    assert.same({}, contacts_of(p, 2))
  end)

  it("items.delete: true, without an existence check", function()
    local _, d = hook(p, "crm.lead.contact.items.delete", { id = 1 })
    assert.is_true(d.result)
    assert.same({}, contacts_of(p, 1))
    _, d = hook(p, "crm.lead.contact.items.delete", { id = 99 })
    assert.is_true(d.result)
    assert.equal(403, (hook(p, "crm.lead.contact.items.delete", { id = 13 })).status)
  end)
end)

describe("time block", function()
  it("has float times, ISO dates, operating and operating_reset_at", function()
    local p = new_portal()
    local res, d = hook(p, "crm.lead.contact.items.get", { id = 1 })
    local t = d.time
    assert.same({ "start", "finish", "duration", "processing", "date_start", "date_finish",
      "operating_reset_at", "operating" }, (json.keys(t)))
    assert.equal(T0, t.start)
    assert.is_true(t.finish >= t.start)
    assert.is_true(math.abs(t.duration - (t.finish - t.start)) < 1e-9)
    assert.equal("2023-11-14T22:13:20+00:00", t.date_start)
    assert.equal(math.floor(T0) + 600, t.operating_reset_at)
    assert.is_true(is_int(t.operating_reset_at))
    assert.is_true(t.operating > 0)
    assert.matches('"processing":0%.01,', res.body)
  end)

  it("is absent from error bodies", function()
    local p = new_portal()
    local _, d = hook(p, "crm.lead.contact.items.get", { id = 13 })
    assert.is_nil(d.time)
  end)
end)

describe("list methods", function()
  local p
  before_each(function() p = new_portal() end)

  it("pages by 50 with total and next, IDs as strings", function()
    local res, d = hook(p, "crm.lead.list", { select = { "ID", "TITLE" } })
    assert.equal(50, #d.result)
    assert.equal("1", d.result[1].ID)
    assert.equal("Lead #1", d.result[1].TITLE)
    assert.equal(246, d.total) -- lead 13 is not readable
    assert.equal(50, d.next)
    assert.matches('"next":50,"total":246,"time"', res.body)
    local seen, start = 0, 0
    while start do
      local _, page = hook(p, "crm.lead.list", { start = start })
      seen = seen + #page.result
      start = page.next
    end
    assert.equal(246, seen)
  end)

  it("start=-1: up to 50 rows, total 0, no next", function()
    local _, d = hook(p, "crm.lead.list", { start = -1, order = { ID = "ASC" }, filter = { [">ID"] = 100 } })
    assert.equal(50, #d.result)
    assert.equal("101", d.result[1].ID)
    assert.equal(0, d.total)
    assert.is_nil(d.next)
  end)

  it("filters by ID operators and sorts DESC", function()
    -- "=" inside a key must be percent-encoded: PHP's parse_str splits at the first "=".
    local _, d = hook(p, "crm.lead.list", "filter[%3E%3DID]=245&filter[<ID]=1000&order[ID]=DESC&select[]=ID")
    local ids = {}
    for i, r in ipairs(d.result) do ids[i] = r.ID end
    assert.same({ "305", "300", "250", "249", "248", "247", "246", "245" }, ids)
    assert.same({ "ID" }, (json.keys(d.result[1])))
    _, d = hook(p, "crm.lead.list", { filter = { ID = 1 } })
    assert.equal(1, #d.result)
    assert.same({ "ID", "TITLE", "NAME", "LAST_NAME", "STATUS_ID" }, (json.keys(d.result[1])))
    _, d = hook(p, "crm.lead.list", { filter = { ["<=ID"] = 3 } })
    assert.equal(3, d.total)
  end)

  it("lists contacts the same way", function()
    local _, d = hook(p, "crm.contact.list", { filter = { [">ID"] = 1290 } })
    assert.equal(9, d.total) -- 1300 is unreadable
    assert.equal("1291", d.result[1].ID)
    assert.is_string(d.result[1].NAME)
  end)
end)

describe("batch", function()
  local p
  before_each(function() p = new_portal() end)

  it("runs named commands in order with $result references", function()
    local cmd = json.omap() -- ordered: "get" refers to "list"
    json.set(cmd, "add", "crm.lead.contact.add?id=2&fields[CONTACT_ID]=1050&fields[IS_PRIMARY]=Y")
    json.set(cmd, "list", "crm.lead.list?filter[%3E%3DID]=1000&select[]=ID")
    json.set(cmd, "get", "crm.lead.contact.items.get?id=$result[list][0][ID]")
    local res, d = hook(p, "batch", { halt = 0, cmd = cmd })
    assert.equal(200, res.status)
    assert.is_true(d.result.result.add)
    assert.equal("1000", d.result.result.list[1].ID)
    assert.equal(1, d.result.result_total.list)
    assert.is_table(d.result.result_time.get)
    assert.matches('"result_error":%[%]', res.body)
    assert.matches('"result_next":%[%]', res.body)
    local calls = p:requests()[1].calls
    assert.equal("1000", calls[3].params.id)
  end)

  it("keeps the JSON key order of cmd", function()
    local body = '{"cmd":{"z":"crm.lead.contact.add?id=2&fields[CONTACT_ID]=1060",'
      .. '"a":"crm.lead.contact.items.get?id=2"}}'
    local res, d = hook(p, "batch", body, { headers = { ["content-type"] = "application/json" } })
    assert.equal(200, res.status)
    assert.same({ "z", "a" }, (json.keys(d.result.result)))
    assert.equal(1060, d.result.result.a[1].CONTACT_ID)
  end)

  it("encodes keys 0..n-1 as arrays, like PHP", function()
    local res = hook(p, "batch", { cmd = { "crm.lead.contact.items.get?id=2", "crm.lead.contact.items.get?id=13" } })
    assert.matches('^{"result":{"result":%[%[%]%],"result_error":{"1":{"error":"ACCESS_DENIED"', res.body)
    assert.matches('"result_time":%[{"start":', res.body)
  end)

  it("accepts form-encoded cmd with the double-encoded sub-query", function()
    local res, d = hook(p, "batch", "halt=0&cmd[a]=crm.lead.contact.add%3Fid%3D2%26fields%255BCONTACT_ID%255D%3D1070")
    assert.equal(200, res.status)
    assert.is_true(d.result.result.a)
    assert.same({ { 1070, 10, "N" } }, contacts_of(p, 2))
  end)

  it("halt=1 stops at the first error; 'false' is a true halt", function()
    for _, halt in ipairs({ 1, "false" }) do
      local _, d = hook(p, "batch", { halt = halt, cmd = {
        a = "crm.lead.contact.items.get?id=1", b = "crm.lead.contact.items.get?id=0",
        c = "crm.lead.contact.items.get?id=2" } })
      assert.is_table(d.result.result.a)
      assert.equal("The parameter ownerEntityID is invalid or not defined.", d.result.result_error.b.error_description)
      assert.is_nil(d.result.result.c)
    end
    local _, d = hook(p, "batch", { halt = 0, cmd = {
      a = "crm.lead.contact.items.get?id=0", c = "crm.lead.contact.items.get?id=2" } })
    assert.is_table(d.result.result.c)
  end)

  it("gives ERROR_BATCH_LENGTH_EXCEEDED to commands past the 50th", function()
    local cmd = {}
    for i = 1, 53 do cmd["k" .. i] = "crm.lead.contact.items.get?id=2" end
    local res, d = hook(p, "batch", { cmd = cmd })
    assert.equal(200, res.status)
    local ok_n, err_n = 0, 0
    for _ in pairs(d.result.result) do ok_n = ok_n + 1 end
    for _, e in pairs(d.result.result_error) do
      err_n = err_n + 1
      assert.equal("ERROR_BATCH_LENGTH_EXCEEDED", e.error)
    end
    assert.equal(50, ok_n)
    assert.equal(3, err_n)
  end)

  it("refuses a nested batch and reports unknown sub-methods", function()
    local _, d = hook(p, "batch", { cmd = { a = "batch?cmd[x]=crm.lead.contact.fields", b = "crm.nope" } })
    assert.equal("ERROR_BATCH_METHOD_NOT_ALLOWED", d.result.result_error.a.error)
    assert.equal("ERROR_METHOD_NOT_FOUND", d.result.result_error.b.error)
  end)

  it("runs with OAuth auth given once", function()
    local _, d = oauth(p, "batch", { auth = p:info().access_token, cmd = { a = "crm.lead.contact.items.get?id=1" } })
    assert.equal(2, #d.result.result.a)
  end)
end)

describe("limits", function()
  it("leaky bucket: 503 QUERY_LIMIT_EXCEEDED past burst, drains at rate", function()
    local p, clock = new_portal({ rate = 2, burst = 5 })
    for _ = 1, 5 do assert.equal(200, (hook(p, "crm.lead.contact.fields")).status) end
    local res = hook(p, "crm.lead.contact.fields")
    assert.equal(503, res.status)
    assert.equal('{"error":"QUERY_LIMIT_EXCEEDED","error_description":"Too many requests"}', res.body)
    clock.t = clock.t + 0.5 -- drains one
    assert.equal(200, (hook(p, "crm.lead.contact.fields")).status)
    assert.equal(503, (hook(p, "crm.lead.contact.fields")).status)
  end)

  it("counts a batch once and rejected calls are not executed", function()
    local p = new_portal({ rate = 1, burst = 2 })
    local cmd = {}
    for i = 1, 10 do cmd["c" .. i] = "crm.lead.contact.fields" end
    assert.equal(200, (hook(p, "batch", { cmd = cmd })).status)
    assert.equal(200, (hook(p, "crm.lead.contact.add", { id = 2, fields = { CONTACT_ID = 1001 } })).status)
    assert.equal(503, (hook(p, "crm.lead.contact.add", { id = 2, fields = { CONTACT_ID = 1002 } })).status)
    p:configure({ rate = 0 })
    assert.same({ { 1001, 10, "N" } }, contacts_of(p, 2))
  end)

  it("rate = 0 disables the bucket", function()
    local p = new_portal({ rate = 0, burst = 1 })
    for _ = 1, 5 do assert.equal(200, (hook(p, "crm.lead.contact.fields")).status) end
  end)

  it("operating time: 429 per method beyond op_limit, lifted after 10 minutes", function()
    local p, clock = new_portal({ rate = false, op_limit = 1, op_cost = { ["crm.lead.contact.fields"] = 0.6 } })
    assert.equal(200, (hook(p, "crm.lead.contact.fields")).status)
    local _, d = hook(p, "crm.lead.contact.fields")
    assert.is_true(math.abs(d.time.operating - 1.2) < 1e-9)
    local res, e = hook(p, "crm.lead.contact.fields")
    assert.equal(429, res.status)
    assert.equal("OPERATION_TIME_LIMIT", e.error)
    assert.equal("Method is blocked due to operation time limit.", e.error_description)
    assert.equal(200, (hook(p, "crm.lead.contact.items.get", { id = 1 })).status) -- other methods still work
    clock.t = d.time.operating_reset_at
    assert.equal(200, (hook(p, "crm.lead.contact.fields")).status)
  end)

  it("charges batch sub-calls to their own methods", function()
    local p = new_portal({ rate = false, op_limit = 1, op_cost = { ["crm.lead.contact.fields"] = 0.6 } })
    local _, d = hook(p, "batch", { cmd = { a = "crm.lead.contact.fields", b = "crm.lead.contact.fields",
      c = "crm.lead.contact.fields" } })
    assert.equal("OPERATION_TIME_LIMIT", d.result.result_error.c.error)
    assert.equal(429, (hook(p, "crm.lead.contact.fields")).status)
  end)
end)

describe("faults", function()
  local p
  before_each(function() p = new_portal() end)

  it("error500, then normal once `times` is used up", function()
    p:fault({ method = "crm.lead.contact.items.get", kind = "error500", times = 1 })
    local res = hook(p, "crm.lead.contact.items.get", { id = 1 })
    assert.equal(500, res.status)
    assert.equal('{"error":"INTERNAL_SERVER_ERROR","error_description":"Internal server error"}', res.body)
    assert.equal(200, (hook(p, "crm.lead.contact.items.get", { id = 1 })).status)
  end)

  it("html502, error200, canned and redirect replace the call", function()
    p:fault({ pattern = "^crm%.lead%.contact%.add$", kind = "html502", times = 1 })
    local res = hook(p, "crm.lead.contact.add", { id = 2, fields = { CONTACT_ID = 1001 } })
    assert.equal(502, res.status)
    assert.equal("text/html", res.headers["Content-Type"])
    assert.matches("502 Bad Gateway", res.body)
    assert.same({}, contacts_of(p, 2)) -- not executed

    p:fault({ method = "crm.lead.contact.fields", kind = "error200", times = 1 })
    local _, d = hook(p, "crm.lead.contact.fields")
    assert.is_string(d.error)
    assert.is_nil(d.result)

    p:fault({ method = "crm.lead.contact.fields", kind = "canned", status = 418, body = "teapot", times = 1 })
    res = hook(p, "crm.lead.contact.fields")
    assert.equal(418, res.status)
    assert.equal("teapot", res.body)

    p:fault({ method = "crm.lead.contact.fields", kind = "redirect", times = 1 })
    res = hook(p, "crm.lead.contact.fields", nil, { query = "x=1" })
    assert.equal(302, res.status)
    assert.equal("http://127.0.0.2:8080/rest/1/" .. CODE .. "/crm.lead.contact.fields.json?x=1", res.headers.Location)
    p:fault({ method = "crm.lead.contact.fields", kind = "redirect", location = "http://other/rest/1/X/", times = 1 })
    res = hook(p, "crm.lead.contact.fields")
    assert.equal("http://other/rest/1/X/crm.lead.contact.fields.json", res.headers.Location)
  end)

  it("truncate, malformed and latency let the call run", function()
    p:fault({ method = "crm.lead.contact.add", kind = "truncate", times = 1 })
    local res = hook(p, "crm.lead.contact.add", { id = 2, fields = { CONTACT_ID = 1001 } })
    assert.equal("truncate", res.fault)
    assert.same({ { 1001, 10, "N" } }, contacts_of(p, 2))

    p:fault({ method = "crm.lead.contact.items.get", kind = "malformed", times = 1 })
    res = hook(p, "crm.lead.contact.items.get", { id = 1 })
    assert.equal(200, res.status)
    assert.is_nil(json.decode(res.body))

    p:fault({ method = "crm.lead.contact.items.get", kind = "latency", delay = 2.5, times = 1 })
    res = hook(p, "crm.lead.contact.items.get", { id = 1 })
    assert.equal(2.5, res.delay)
    assert.equal(200, res.status)
    assert.is_nil((hook(p, "crm.lead.contact.items.get", { id = 1 })).delay)
  end)

  it("reset closes without an answer; faults apply only after auth", function()
    p:fault({ pattern = ".", kind = "reset" })
    assert.equal(401, (send(p, "/rest/1/bad/crm.lead.contact.fields")).status)
    local res = hook(p, "crm.lead.contact.fields")
    assert.equal("reset", res.fault)
    assert.equal("reset", (hook(p, "crm.lead.contact.fields")).fault) -- no times: until reset
    p:reset()
    assert.is_nil((hook(p, "crm.lead.contact.fields")).fault)
  end)

  it("is set through POST /_fake/fault, and bad specs are refused", function()
    local res = send(p, "/_fake/fault", { method = "CRM.Lead.Contact.Fields", kind = "error500" })
    assert.equal(200, res.status)
    assert.equal(500, (hook(p, "crm.lead.contact.fields")).status)
    assert.equal(400, (send(p, "/_fake/fault", { kind = "nope" })).status)
    send(p, "/_fake/fault", { clear = true })
    assert.equal(200, (hook(p, "crm.lead.contact.fields")).status)
  end)
end)

describe("request log and control endpoints", function()
  local p
  before_each(function() p = new_portal() end)

  it("logs every REST and token request, rejected ones too, but no control calls", function()
    hook(p, "crm.lead.contact.items.get", { id = 1 }, { conn = 7 })
    send(p, "/rest/1/bad/crm.lead.contact.items.get", { id = 1 })
    oauth(p, "crm.lead.contact.fields")
    send(p, "/oauth/token/", nil, { query = "grant_type=refresh_token" })
    send(p, "/_fake/info")
    local res, log = send(p, "/_fake/requests", nil, { method = "GET" })
    assert.equal(200, res.status)
    assert.equal(4, #log)
    assert.equal(1, log[1].n)
    assert.equal("crm.lead.contact.items.get", log[1].method)
    assert.equal("POST", log[1].http_method)
    assert.equal("webhook", log[1].auth)
    assert.equal(1, log[1].params.id)
    assert.equal(7, log[1].conn)
    assert.equal(200, log[1].status)
    assert.is_nil(log[1].error)
    assert.equal(T0, log[1].time)
    assert.equal("NO_AUTH_FOUND", log[2].error)
    assert.equal("none", log[3].auth)
    assert.equal("oauth.token", log[4].method)
    assert.equal("invalid_request", log[4].error)
    assert.equal(4, #p:requests())
  end)

  it("info matches p:info()", function()
    local _, d = send(p, "/_fake/info", nil, { method = "GET" })
    assert.equal("/rest/1/" .. CODE .. "/", d.webhook_path)
    assert.equal(CODE, d.code)
    assert.equal(p:info().access_token, d.access_token)
    assert.equal(p:info().client_secret, d.client_secret)
    assert.equal(32, #d.member_id)
  end)

  it("generates a random 16-character code by default", function()
    local q = Portal.new({})
    assert.matches("^[a-z0-9]+$", q:info().code)
    assert.equal(16, #q:info().code)
  end)

  it("reset restores data, clears the log and keeps tokens unless asked", function()
    local tok = p:info().access_token
    hook(p, "crm.lead.contact.items.delete", { id = 1 })
    send(p, "/_fake/reset", {})
    assert.equal(0, #p:requests())
    assert.equal(2, #contacts_of(p, 1))
    assert.equal(tok, p:info().access_token)
    send(p, "/_fake/reset", { tokens = true })
    assert.not_equal(tok, p:info().access_token)
    assert.equal("invalid_token", select(2, oauth(p, "crm.lead.contact.fields", { auth = tok })).error)
  end)

  it("config and expire_tokens change the portal live", function()
    local res = send(p, "/_fake/config", { rate = 1, burst = 1 })
    assert.equal(200, res.status)
    hook(p, "crm.lead.contact.fields")
    assert.equal(503, (hook(p, "crm.lead.contact.fields")).status)
    send(p, "/_fake/expire_tokens")
    local _, d = oauth(p, "crm.lead.contact.fields", { auth = p:info().access_token })
    assert.equal("expired_token", d.error)
  end)

  it("stats counts requests, statuses and connections", function()
    hook(p, "crm.lead.contact.fields", nil, { conn = 1 })
    hook(p, "crm.lead.contact.fields", nil, { conn = 2 })
    hook(p, "crm.nope", nil, { conn = 2 })
    local _, s = send(p, "/_fake/stats", nil, { method = "GET" })
    assert.equal(3, s.requests)
    assert.equal(2, s.by_status["200"])
    assert.equal(1, s.by_status["404"])
    assert.equal(2, s.connections)
  end)
end)

describe("data loading", function()
  it("accepts a JSON data file with the same schema", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write('{"leads":[{"ID":7,"TITLE":"x","access":"read","contacts":[{"CONTACT_ID":3,"SORT":20,"IS_PRIMARY":"Y"}]}],'
      .. '"contacts":[{"ID":3,"NAME":"n"}]}')
    f:close()
    local p = new_portal({ data = Portal.load_data(path) })
    os.remove(path)
    assert.same({ { 3, 20, "Y" } }, contacts_of(p, 7))
    assert.equal(403, (hook(p, "crm.lead.contact.items.delete", { id = 7 })).status)
    local _, d = hook(p, "crm.lead.list")
    assert.equal(1, d.total)
  end)
end)

describe("module hygiene", function()
  it("defines no globals", function()
    local before = {}
    for k in pairs(_G) do before[k] = true end
    for _, m in ipairs({ "bitrix24.fake.portal", "bitrix24.fake.json", "bitrix24.fake.data" }) do
      package.loaded[m] = nil
    end
    local P = require "bitrix24.fake.portal"
    local q = P.new({ code = "c" })
    q:handle({ method = "POST", path = "/rest/1/c/batch", query = "cmd[a]=crm.lead.list", headers = {}, body = "" })
    for k in pairs(_G) do assert.is_true(before[k], "new global " .. tostring(k)) end
  end)
end)

describe("options", function()
  it("turns float options (cjson on Lua 5.4) into integers", function()
    local p = Portal.new({ code = "c", user_id = 1.0, token_ttl = 3600.0 })
    assert.equal("/rest/1/c/", p:info().webhook_path)
    assert.equal(200, (send(p, "/rest/1/c/crm.lead.contact.fields")).status)
  end)
end)

describe("export options", function()
  it("answers with a delay of latency plus call_cost per call plus the count cost, for the host to wait", function()
    local p = new_portal({ leads = 2000, latency = 0.5, call_cost = 0.25, count_cost_per_1000_rows = 1 })
    local res, d = hook(p, "crm.lead.list", { start = 0 })
    assert.equal(2000, d.total)
    assert.equal(0.5 + 0.25 + 2, res.delay)
    assert.near(0.01 + 0.25 + 2, d.time.processing, 1e-9)
    res = hook(p, "crm.lead.list", { start = -1 })
    assert.equal(0.5 + 0.25, res.delay)
    res, d = hook(p, "batch", { cmd = { a = "crm.lead.list?start=-1", b = "crm.lead.list?start=0" } })
    assert.equal(0.5 + 0.25 + 0.25 + 2, res.delay)
    assert.near(0.01 + 0.25 + 0.01 + 0.25 + 2, d.time.processing, 1e-4)
    -- Operating time of crm.lead.list: the four calls above.
    assert.near(4 * 0.26 + 2 * 2, d.result.result_time.b.operating, 1e-4)
    assert.is_nil((hook(new_portal(), "crm.lead.list")).delay) -- all default to 0
  end)

  it("pages by ID ranges exactly as the general filter does", function()
    local p = new_portal({ leads = 500 })
    local orders = { {}, { ID = "ASC" }, { ID = "DESC" } }
    local bounds = { { [">ID"] = 100 }, { ["<ID"] = 300 }, { [">=ID"] = 101, ["<=ID"] = 250 },
      { [">ID"] = "0", ["<ID"] = 700 }, { [">ID"] = { 300, 5 } }, { [">ID"] = {} }, { ["<=ID"] = 10.5 } }
    for _, order in ipairs(orders) do
      for _, filter in ipairs(bounds) do
        for _, start in ipairs({ -1, 0, 50, 120 }) do
          local _, fast = hook(p, "crm.lead.list", { order = order, filter = filter, start = start, select = { "ID" } })
          -- A condition on TITLE that every lead meets forces the general path.
          local general = { ["%TITLE"] = "Lead" }
          for k, v in pairs(filter) do general[k] = v end
          local _, slow = hook(p, "crm.lead.list", { order = order, filter = general, start = start, select = { "ID" } })
          assert.same(slow.result, fast.result)
          assert.equal(slow.total, fast.total)
          assert.equal(slow.next, fast.next)
        end
      end
    end
  end)
end)
