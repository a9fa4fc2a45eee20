// bench/dashboard.pl's browser part: each view of the dashboard loaded 5
// times in chromium (a fresh page each time, nothing cached), the time
// from the navigation until the view's content shows, and the admin API
// calls it made (count, bytes, the slowest).  A bench figure, not a test.
//
//   BASE=http://127.0.0.1:PORT/opamp-dashboard/ UID=<an agent>
//   node dashboard-bench.mjs

import { chromium } from 'playwright-core';

const BASE = process.env.BASE;
const views = [
    ['summary', '#/summary', ['#summary-cards .card',
                               '#hosts-table tbody tr']],
    ['inventory', '#/inventory', 'main table'],
    ['agents', '#/agents', '#agents-table tbody tr'],
    ['agents, component filter', '#/agents?component=receivers%2Frece001',
     '#agents-table tbody tr'],
    ['agents, FAILED', '#/agents?config_status=FAILED',
     '#agents-table tbody tr'],
    ['agents of a group', '#/agents?group=web', '#agents-table tbody tr'],
    ['agents of a group, FAILED', '#/agents?group=web&config_status=FAILED',
     '#agents-table tbody tr'],
    ['agent', '#/agent/' + process.env.UID, '#config-error, main pre'],
    ['groups', '#/groups', 'main table'],
    ['group', '#/group/web', ['#group-figures', '#group-rollout ol.stages']],
    ['rollouts', '#/rollouts', '#rollouts section'],
    ['audit', '#/audit', 'main table, main p.muted'],
];

const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});

for (const [name, hash, selector] of views) {
    const times = [];
    let calls = [];
    for (let i = 0; i < 5; i++) {
        const context = await browser.newContext({
            viewport: { width: 1280, height: 900 } });
        const page = await context.newPage();
        const mine = [];
        page.on('requestfinished', async (r) => {
            if (!r.url().includes('/opamp-admin/')) {
                return;
            }
            const t = r.timing();
            const s = await r.sizes();
            mine.push({ what: r.url().replace(/^.*\/opamp-admin\//, ''),
                        ms: t.responseEnd, bytes: s.responseBodySize });
        });
        const t0 = Date.now();
        await page.goto(BASE + hash, { waitUntil: 'domcontentloaded' });
        for (const sel of [].concat(selector)) {
            await page.waitForSelector(sel, { timeout: 60000 });
        }
        times.push(Date.now() - t0);
        // the first poll's calls (the next poll is 5 s away)
        await page.waitForTimeout(200);
        calls = mine;
        await context.close();
    }
    times.sort((a, b) => a - b);
    const bytes = calls.reduce((n, c) => n + c.bytes, 0);
    const slow = calls.reduce((m, c) => c.ms > m.ms ? c : m,
                              { ms: 0, what: '' });
    console.log(`${name.padEnd(28)} median ${String(times[2]).padStart(5)} ms`
                + ` (min ${times[0]}, max ${times[4]}); ${calls.length} API`
                + ` call(s), ${bytes} B, slowest ${slow.what}`
                + ` ${slow.ms.toFixed(1)} ms`);
}

await browser.close();
