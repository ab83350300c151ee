// Row 7e: a peer's list export against the fake portal, for bench/run.lua.
//
//   node bench/npm/export.cjs b24jssdk|2bad LEADS [unlimited]
//
// Exports every lead (select ID, TITLE) with the package's own list helper
// and prints one line: rows=N seconds=S ordered=true|false. The requests
// are counted by the portal. `unlimited` lifts b24jssdk's client-side
// bucket (for counting requests without waiting it out); without it each
// package runs with its defaults, as a user would.
//
// Environment: B24_SDK_DIR (folder whose node_modules holds the packages),
// B24_HOOK_URL (https webhook URL), NODE_EXTRA_CA_CERTS (the portal's CA).
'use strict'

const path = require('node:path')
const { createRequire } = require('node:module')

const sdkRequire = createRequire(path.resolve(process.env.B24_SDK_DIR, 'package.json'))
const [which, leadsArg, limit] = process.argv.slice(2)
const want = Number(leadsArg)
const params = { select: ['ID', 'TITLE'] }

// b24jssdk: fetchList, its streaming helper for large lists (ID > last,
// start = -1, one request a page of 50).
function b24jssdk() {
  const { B24Hook } = sdkRequire('@bitrix24/b24jssdk')
  const options = limit === 'unlimited' ? {
    restrictionParams: {
      rateLimit: { burstLimit: 1e6, drainRate: 1e6, adaptiveEnabled: false },
      adaptiveConfig: { enabled: false, thresholdPercent: 100, coefficient: 0, maxDelay: 0 },
    },
  } : {}
  const b24 = B24Hook.fromWebhookUrl(process.env.B24_HOOK_URL, options)
  return async (onRow) => {
    for await (const chunk of b24.actions.v2.fetchList.make({ method: 'crm.lead.list', params, idKey: 'ID' })) {
      for (const row of chunk) onRow(row)
    }
  }
}

// @2bad/bitrix: list, one counted call then batches of start = 50, 100, ...
// sub-calls (all rows in memory), paced by its own queue at 2 a second.
function twobad() {
  const { Bitrix } = sdkRequire('@2bad/bitrix')
  const b24 = Bitrix(process.env.B24_HOOK_URL.replace(/\/$/, ''))
  return async (onRow) => {
    const res = await b24.list('crm.lead.list', { ...params, order: { ID: 'ASC' } })
    for (const row of res.result) onRow(row)
  }
}

async function main() {
  let rows = 0
  let last = -1
  let ordered = true
  const onRow = (row) => {
    const id = Number(row.ID)
    if (!(id > last)) ordered = false
    last = id
    rows++
  }
  // The package is loaded and its client made before the clock starts.
  const peers = { b24jssdk, '2bad': twobad }
  if (!peers[which]) throw new Error('usage: export.cjs b24jssdk|2bad LEADS [unlimited]')
  const exportAll = peers[which]()
  const t0 = process.hrtime.bigint()
  await exportAll(onRow)
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9
  // Ascending and as many as the portal holds: each id once.
  process.stdout.write(`rows=${rows} seconds=${seconds.toFixed(3)} ordered=${ordered && rows === want}\n`)
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack || e) + '\n')
  process.exitCode = 1
})
