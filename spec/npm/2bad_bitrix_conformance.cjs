// Drives @2bad/bitrix (from npm) against the fake portal and prints what it
// gets back, one JSON object per line ({"check": "<name>", ...}), as
// b24jssdk_conformance.cjs does; spec/npm_conformance_spec.lua judges it.
// This client sends every call as a GET with the parameters in the query
// string, and batch commands double-encoded in cmd[...].
'use strict'

const path = require('node:path')
const { createRequire } = require('node:module')

const sdkRequire = createRequire(path.resolve(process.env.B24_SDK_DIR, 'package.json'))
const { Bitrix } = sdkRequire('@2bad/bitrix')

function print(check, fields) {
  process.stdout.write(JSON.stringify({ check, ...fields }) + '\n')
}

function failure(e) {
  const response = e && e.response
  return {
    message: String(e && e.message),
    http_status: response ? response.statusCode : null,
    body: response ? JSON.stringify(response.body) : null,
  }
}

async function control(name, body) {
  const res = await fetch(`${process.env.B24_CONTROL_URL}/_fake/${name}`, {
    method: body ? 'POST' : 'GET',
    headers: { 'Content-Type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  })
  return res.json()
}

async function step(check, fn) {
  try {
    print(check, { value: await fn() })
  } catch (e) {
    print(check, { error: failure(e) })
  }
}

// got retries a 503 by itself: off, so the portal's answer shows.
const options = { retry: { limit: 0 } }
const hookBase = (url) => url.replace(/\/$/, '')

async function main() {
  const b24 = Bitrix(hookBase(process.env.B24_HOOK_URL), undefined, options)

  await step('items.get', async () => (await b24.call('crm.lead.contact.items.get', { id: 1 })).result)
  await step('batch', async () => (await b24.batch({
    first: { method: 'crm.lead.contact.items.get', params: { id: 1 } },
    bind: { method: 'crm.lead.contact.add', params: { id: 2, fields: { CONTACT_ID: '$result[first][1][CONTACT_ID]' } } },
  })).result)
  const log = await control('requests')
  const sent = log.filter((e) => e.method === 'batch').pop()
  print('batch.sent', { query: sent ? sent.query : null, http_method: sent ? sent.http_method : null })
  await step('items.get.after.batch', async () => (await b24.call('crm.lead.contact.items.get', { id: 2 })).result)
  // Its list: one call, then batches of start=50, 100, ... sub-calls.
  await step('list', async () => {
    const res = await b24.list('crm.lead.list', { select: ['ID'] })
    return { ids: res.result.map((r) => r.ID), total: res.total }
  })

  const bad = Bitrix(hookBase(process.env.B24_BAD_HOOK_URL), undefined, options)
  await step('wrong.code', async () => bad.call('crm.lead.contact.items.get', { id: 1 }))

  await control('reset', {})
  await control('config', { rate: 0.001, burst: 3 })
  for (let i = 0; i < 5; i++) {
    await step(`rate.${i}`, async () => (await b24.call('crm.lead.contact.items.get', { id: 1 })).result)
  }
}

main().then(
  () => print('done', {}),
  (e) => {
    print('crashed', { message: String(e && e.stack || e) })
    process.exitCode = 1
  },
)
