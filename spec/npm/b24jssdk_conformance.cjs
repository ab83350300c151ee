// Drives the official JS SDK (@bitrix24/b24jssdk, from npm) against the fake
// portal and prints what it gets back, one JSON object per line:
//   {"check": "<name>", ...}
// The assertions live in spec/npm_conformance_spec.lua, which installs the
// package, starts the portal and runs this script. Nothing is judged here:
// an answer the SDK could not get is printed as {"check", "error": {...}}.
//
// Environment: B24_SDK_DIR (folder whose node_modules holds the SDK),
// B24_HOOK_URL (https webhook URL), B24_BAD_HOOK_URL (same with a wrong
// code), B24_CONTROL_URL (the portal's http base, for /_fake/),
// NODE_EXTRA_CA_CERTS (the portal's CA).
'use strict'

const path = require('node:path')
const { createRequire } = require('node:module')

const sdkRequire = createRequire(path.resolve(process.env.B24_SDK_DIR, 'package.json'))
const { B24Hook } = sdkRequire('@bitrix24/b24jssdk')

function print(check, fields) {
  process.stdout.write(JSON.stringify({ check, ...fields }) + '\n')
}

// What the SDK reports for a failed call, with the portal's own body.
function failure(e) {
  const response = e && e.originalError && e.originalError.response
  return {
    code: e && e.code,
    status: e && e.status,
    message: String(e && e.message),
    http_status: response ? response.status : null,
    body: response ? JSON.stringify(response.data) : null,
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

// The SDK's own limiter and retries would hide the portal's answers: no
// retries, and a client-side bucket far above the portal's.
const restrictionParams = {
  maxRetries: 1,
  rateLimit: { burstLimit: 100000, drainRate: 100000, adaptiveEnabled: false },
  adaptiveConfig: { enabled: false, thresholdPercent: 100, coefficient: 0, maxDelay: 0 },
}

async function call(b24, check, method, params) {
  try {
    const res = await b24.actions.v2.call.make({ method, params })
    if (!res.isSuccess) {
      print(check, { error: { messages: res.getErrorMessages() } })
      return null
    }
    const data = res.getData()
    print(check, { result: data.result, time: data.time })
    return res
  } catch (e) {
    print(check, { error: failure(e) })
    return null
  }
}

async function main() {
  const b24 = B24Hook.fromWebhookUrl(process.env.B24_HOOK_URL, { restrictionParams })

  // The six crm.lead.contact methods.
  await call(b24, 'fields', 'crm.lead.contact.fields', {})
  await call(b24, 'items.get', 'crm.lead.contact.items.get', { id: 1 })
  await call(b24, 'add', 'crm.lead.contact.add', { id: 2, fields: { CONTACT_ID: 1050 } })
  await call(b24, 'add.again', 'crm.lead.contact.add', { id: 2, fields: { CONTACT_ID: 1050 } })
  await call(b24, 'items.set', 'crm.lead.contact.items.set',
    { id: 2, items: [{ CONTACT_ID: 1050, SORT: 30 }, { CONTACT_ID: 1051, SORT: 20, IS_PRIMARY: 'Y' }] })
  await call(b24, 'items.get.after.set', 'crm.lead.contact.items.get', { id: 2 })
  await call(b24, 'delete', 'crm.lead.contact.delete', { id: 2, fields: { CONTACT_ID: 1050 } })
  await call(b24, 'delete.again', 'crm.lead.contact.delete', { id: 2, fields: { CONTACT_ID: 1050 } })
  await call(b24, 'items.delete', 'crm.lead.contact.items.delete', { id: 2 })
  await call(b24, 'items.get.after.delete', 'crm.lead.contact.items.get', { id: 2 })
  await call(b24, 'items.get.bad.id', 'crm.lead.contact.items.get', { id: 0 })
  await call(b24, 'items.get.denied', 'crm.lead.contact.items.get', { id: 13 })

  // A batch whose second command refers to the first one. The SDK writes
  // each command with qs.stringify, so the reference travels encoded.
  try {
    const res = await b24.actions.v2.batch.make({
      calls: {
        first: { method: 'crm.lead.contact.items.get', params: { id: 1 } },
        bind: { method: 'crm.lead.contact.add',
          params: { id: 2, fields: { CONTACT_ID: '$result[first][0][CONTACT_ID]', SORT: 70 } } },
      },
      options: { isHaltOnError: true },
    })
    // Without returnAjaxResult the data is { key: that command's result }.
    print('batch', { success: res.isSuccess, result: res.getData(), errors: res.getErrorMessages() })
  } catch (e) {
    print('batch', { error: failure(e) })
  }
  const log = await control('requests')
  const sent = log.filter((e) => e.method === 'batch').pop()
  print('batch.sent', { cmd: sent ? sent.params.cmd : null, calls: sent ? sent.calls : null })
  await call(b24, 'items.get.after.batch', 'crm.lead.contact.items.get', { id: 2 })

  // List paging: offset pages (start = next) and the SDK's own >ID walk.
  try {
    const pages = []
    let res = await b24.actions.v2.call.make({ method: 'crm.lead.list', params: { select: ['ID'], start: 0 } })
    while (res) {
      pages.push({ ids: res.getData().result.map((r) => r.ID), total: res.getTotal(), more: res.isMore() })
      res = await res.fetchNext(b24.getHttpClient('v2'))
    }
    print('list.pages', { pages })
  } catch (e) {
    print('list.pages', { error: failure(e) })
  }
  try {
    const res = await b24.actions.v2.callList.make({ method: 'crm.lead.list', params: { select: ['ID'] }, idKey: 'ID' })
    print('list.all', { success: res.isSuccess, ids: res.getData().map((r) => r.ID) })
  } catch (e) {
    print('list.all', { error: failure(e) })
  }

  // A wrong webhook code.
  const bad = B24Hook.fromWebhookUrl(process.env.B24_BAD_HOOK_URL, { restrictionParams })
  await call(bad, 'wrong.code', 'crm.lead.contact.items.get', { id: 1 })

  // The leaky bucket: an empty one of 3 that does not drain within the test.
  await control('reset', {})
  await control('config', { rate: 0.001, burst: 3 })
  const statuses = []
  for (let i = 0; i < 5; i++) {
    const res = await call(b24, `rate.${i}`, 'crm.lead.contact.items.get', { id: 1 })
    statuses.push(res ? 200 : 'error')
  }
  print('rate.statuses', { statuses })
}

main().then(
  () => print('done', {}),
  (e) => {
    print('crashed', { message: String(e && e.stack || e) })
    process.exitCode = 1
  },
)
