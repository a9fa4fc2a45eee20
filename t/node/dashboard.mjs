// The dashboard in a real browser (t/95-dashboard.t): Debian's chromium,
// headless, driven by playwright-core.  The Perl test runs nginx, Redis
// and the simulated agents; this script walks the views as an operator
// would and prints one JSON line per check ({"ok", "name", "diag"}), then
// {"done": true}.  Screenshots go to SHOTS.
//
//   BASE=http://127.0.0.1:PORT/opamp-dashboard/ SHOTS=dir CHROMIUM=path
//   AGENTS=n node dashboard.mjs

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const BASE = process.env.BASE;
const SHOTS = process.env.SHOTS;
const AGENTS = Number(process.env.AGENTS);
const WAIT = 60000;     // the longest wait for something the page shows

mkdirSync(SHOTS, { recursive: true });

function report(ok, name, diag) {
    process.stdout.write(JSON.stringify({ ok: !!ok, name, diag }) + '\n');
}

// a check that waits for the page: ok when fn resolves in time
async function check(name, fn) {
    try {
        const d = await fn();
        report(true, name, d === undefined ? undefined : String(d));
        return true;
    } catch (e) {
        report(false, name, String(e && e.stack ? e.stack : e));
        return false;
    }
}

const consoleErrors = [];
// the API errors the script causes on purpose: the browser logs each
// failed fetch as a console error of its own
const expected = [/status of 404/, /status of 400/];

const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // as root in CI: no sandbox (chromium refuses root with one)
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    timeout: 60000,
});

const context = await browser.newContext({
    viewport: { width: 1280, height: 900 } });
const page = await context.newPage();
let allowApiErrors = false;
page.on('console', (msg) => {
    if (msg.type() !== 'error') {
        return;
    }
    const text = msg.text();
    if (allowApiErrors && expected.some((re) => re.test(text))) {
        return;
    }
    // a group without a rollout (or a server without the rollouts API)
    // answers 404, which the page shows as "no rollout"
    if (/status of 404/.test(text)
        && /\/opamp-admin\/rollouts(\/|$)/.test(msg.location().url)) {
        return;
    }
    consoleErrors.push(text);
});
page.on('pageerror', (e) => consoleErrors.push('page error: ' + e.message));
// what failed, for the diagnostics of a console error
const failed = [];
page.on('response', (r) => {
    if (r.status() >= 400) {
        failed.push(`${r.status()} ${r.request().method()} ${r.url()}`);
    }
});

const apiCalls = [];
page.on('request', (r) => {
    if (r.url().includes('/opamp-admin/')) {
        apiCalls.push(r.method() + ' ' + r.url().replace(/^.*\/opamp-admin\//,
                                                          ''));
    }
});

async function shot(name) {
    await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
}

async function waitText(selector, re) {
    await page.waitForFunction(([s, src]) => {
        const e = document.querySelector(s);
        return e && new RegExp(src).test(e.textContent);
    }, [selector, re.source], { timeout: WAIT });
    return page.textContent(selector);
}

async function rows(selector) {
    return page.locator(`${selector} tbody tr`).count();
}

// --- summary -----------------------------------------------------------

await check('the page loads and shows the fleet summary', async () => {
    const t0 = Date.now();
    await page.goto(BASE, { waitUntil: 'load' });
    const text = await waitText('#summary-cards',
                                new RegExp(`^${AGENTS}agents known`));
    return `in ${Date.now() - t0} ms: ${text.slice(0, 120)}`;
});
await check('the summary counts the live agents', async () => {
    await waitText('#summary-cards', new RegExp(`${AGENTS}connected`));
});
await check('the summary shows this nginx\'s figures (its metrics)',
            async () => {
    // a rate needs two polls: the agents keep polling meanwhile
    return waitText('#server-cards',
                    /[1-9][\d.]*agent messages \/ s/);
});
await check('the summary lists each host, a stale one marked',
            async () => {
    const row = '#hosts-table tr[data-host="dash-a"]';
    await waitText(row, /^dash-alive/);
    await waitText('#hosts-table tr.stale[data-host="gone-host"]',
                   /stale[\s\S]*last heard/);
    // a rate needs two publishes of the host, a period apart
    return waitText(`${row} td:nth-child(4)`, /^[\d.]+$/);
});
await shot('summary');

// --- inventory ----------------------------------------------------------

await check('inventory: agents by version, os, component', async () => {
    await page.keyboard.press('2');
    await waitText('main', /0\.113\.0/);
    await waitText('main', /receivers\/rece001/);
    // a fold of components by kind opens, and stays open across refreshes
    await page.click('details[data-kind="receivers"] summary');
    await page.waitForTimeout(6000);
    const open = await page.evaluate(() => document.querySelector(
        'details[data-kind="receivers"]').open);
    if (!open) {
        throw new Error('the receivers fold closed at a refresh');
    }
});
await shot('inventory');

await check('inventory: a count opens the matching agents', async () => {
    await page.click('a[href*="service.version%3D0.113.0"]');
    await page.waitForSelector('#agents-table tbody tr', { timeout: WAIT });
    await page.waitForFunction(() => document.querySelectorAll(
        '#agents-table tbody tr').length === 1, null, { timeout: WAIT });
    const n = await rows('#agents-table');
    if (n !== 1) {
        throw new Error(`${n} rows`);
    }
    return page.textContent('#agents-table');
});

// --- agents table --------------------------------------------------------

await check('agents: the table lists every agent', async () => {
    await page.goto(BASE + '#/agents');
    await page.waitForFunction((n) => document.querySelectorAll(
        '#agents-table tbody tr').length === n, AGENTS, { timeout: WAIT });
});
await shot('agents');

await check('agents: a filter narrows the table', async () => {
    await page.fill('#filter-attr', 'host.name=web-3');
    await page.click('#agent-filters button[type=submit]');
    await page.waitForFunction(() => /host\.name%3Dweb-3/.test(location.hash)
        && document.querySelectorAll('#agents-table tbody tr').length === 1,
        null, { timeout: WAIT });
    return page.textContent('#agents-table tbody');
});

await check('agents: an agent opens with its description and health',
            async () => {
    await page.click('#agents-table tbody a');
    await waitText('main', /Identifying attributes[\s\S]*web-3/);
    await waitText('main', /pipeline:traces/);
    await waitText('main', /receivers/);
});
await shot('agent');

// --- groups: make one, see the agents apply it --------------------------

await check('groups: a new group is saved', async () => {
    await page.goto(BASE + '#/groups');
    await page.click('#new-group');
    await page.fill('#group-name', 'web');
    await page.fill('#group-selector', 'service.name=web');
    await page.fill('fieldset.file .file-body',
                    'receivers:\n  otlp: {}\nexporters:\n  debug: {}\n');
    await page.fill('#group-note', 'first config from the dashboard');
    await page.click('#group-save');
    await page.waitForFunction(() => location.hash === '#/group/web',
                               null, { timeout: WAIT });
});

await check('groups: the agents turn APPLIED, the failing one FAILED',
            async () => {
    return waitText('#group-figures', new RegExp(
        `^${AGENTS} agents, 1 FAILED, 1 not running`));
});

await check('groups: an edit of the config reaches the agents', async () => {
    await page.fill('fieldset.file .file-body',
                    'receivers:\n  otlp: {}\nexporters:\n  otlp: {}\n');
    await page.click('#group-save');
    await waitText('#group-msg', /Saved as version 2/);
    // the new config: not running it until they apply it, then again
    // all but the failing one
    await page.goto(BASE + '#/agents?config_status=APPLIED');
    await page.waitForFunction((n) => document.querySelectorAll(
        '#agents-table tbody tr').length === n, AGENTS - 1,
        { timeout: WAIT });
    await page.goto(BASE + '#/group/web');
    return waitText('#group-figures', new RegExp(
        `^${AGENTS} agents, 1 FAILED, 1 not running`));
});

await check('groups: the group\'s rollout is shown', async () => {
    return waitText('#group-rollout', /No rollout of this group|stage/i);
});

await check('groups: two versions compared', async () => {
    await page.waitForSelector('#diff-show', { timeout: WAIT });
    await page.click('#diff-show');
    return waitText('main', /-  debug: \{\}[\s\S]*\+  otlp: \{\}/);
});
await shot('group');

// --- a staged rollout, steered from the page --------------------------

await check('rollouts: new files saved as a staged rollout', async () => {
    await page.goto(BASE + '#/group/web');
    await page.waitForFunction(() => {
        const b = document.querySelector('fieldset.file .file-body');
        return b && b.value.length > 0;
    }, null, { timeout: WAIT });
    await page.fill('fieldset.file .file-body',
                    'receivers:\n  otlp: {}\nexporters:\n  otlphttp: {}\n');
    await page.fill('#group-stages', '1, 50%, 100%');
    await page.fill('#group-soak', '4');
    await page.click('#group-save');
    return waitText('#group-msg', /Saved as version 3/);
});

await check('rollouts: the rollout shown running, paused and resumed',
            async () => {
    await page.goto(BASE + '#/rollouts');
    const card = 'section.rollout[data-group="web"]';
    await waitText(card, /running[\s\S]*v2 \u2192 v3/);
    await page.click(`${card} button[data-action="pause"]`);
    await waitText('main', /web: pause done, the rollout is paused/);
    await waitText(card, /paused/);
    await shot('rollouts');
    await page.click(`${card} button[data-action="resume"]`);
    return waitText('main', /web: resume done, the rollout is running/);
});

await check('rollouts: it runs to its end, the agents apply it',
            async () => {
    await page.goto(BASE + '#/group/web');
    await waitText('#group-rollout', /done/);
    await waitText('#group-rollout', new RegExp(
        `reached ${AGENTS}, running the new version ${AGENTS - 1}, `
        + 'failed 1'));
    await waitText('#group-figures', new RegExp(
        `^${AGENTS} agents, 1 FAILED, 1 not running`));
    // the editor, loaded while the rollout ran, shows the new files now
    await page.waitForFunction(() => /otlphttp/.test(document.querySelector(
        'fieldset.file .file-body').value), null, { timeout: WAIT });
});
await shot('rollout-done');

await check('groups: the list shows the group', async () => {
    await page.goto(BASE + '#/groups');
    return waitText('main', /web[\s\S]*service\.name=web/);
});
await shot('groups');

// --- a group's counts open its agents (GET agents?group=) --------------

await check('summary: a group\'s FAILED count opens its FAILED agents',
            async () => {
    await page.goto(BASE);
    await page.waitForSelector('a.group-failed', { timeout: WAIT });
    await page.click('a.group-failed');
    await page.waitForFunction(() => /group=web/.test(location.hash)
        && /config_status=FAILED/.test(location.hash)
        && document.querySelectorAll('#agents-table tbody tr').length === 1,
        null, { timeout: WAIT });
    return waitText('#agents-table tbody', /web-bad/);
});
await check('summary: a group\'s count opens its agents', async () => {
    await page.goto(BASE);
    await page.waitForSelector('a.group-agents', { timeout: WAIT });
    await page.click('a.group-agents');
    await page.waitForFunction((n) => /group=web/.test(location.hash)
        && document.querySelectorAll('#agents-table tbody tr').length === n,
        AGENTS, { timeout: WAIT });
    return waitText('main', /of group web, in rollout order/);
});

// --- the failed agent ------------------------------------------------------

await check('a FAILED agent shows its error', async () => {
    await page.goto(BASE + '#/agents?config_status=FAILED');
    await page.waitForFunction(() => document.querySelectorAll(
        '#agents-table tbody tr').length === 1, null, { timeout: WAIT });
    await page.click('#agents-table tbody a');
    return waitText('#config-error', /bad receiver: nosuch/);
});
await check('the agent view diffs effective and desired config',
            async () => {
    return waitText('main', /Effective \u2192 desired/);
});
await shot('agent-failed');

// --- audit, rollouts ---------------------------------------------------

await check('audit: the writes of the dashboard are listed', async () => {
    await page.keyboard.press('6');
    return waitText('main', /PUT \/opamp-admin\/configs\/groups\/web/);
});
await shot('audit');

allowApiErrors = true;
await check('rollouts: the tab lists no rollout once it ended',
            async () => {
    await page.keyboard.press('5');
    return waitText('#rollouts', /No rollout is running or paused/);
});

// --- errors in words ---------------------------------------------------

await check('an API error is shown in words', async () => {
    await page.goto(BASE + '#/agent/not-a-uid');
    return waitText('#error', new RegExp('GET /opamp-admin/agents/'
        + 'not-a-uid failed: 400 invalid instance uid'));
});
await check('a refused write is shown in words', async () => {
    await page.goto(BASE + '#/group');
    await page.fill('#group-name', 'broken');
    await page.fill('#group-selector', 'no equals sign');
    await page.fill('fieldset.file .file-body', 'x: 1\n');
    await page.click('#group-save');
    return waitText('#group-msg', /failed: 400 invalid selector/);
});
allowApiErrors = false;

// --- keyboard ----------------------------------------------------------

await check('keyboard: Tab reaches the views and Enter opens one',
            async () => {
    await page.goto(BASE + '#/summary');
    await waitText('#summary-cards', /agents known/);
    let found = false;
    await page.goto('about:blank');
    await page.goto(BASE + '#/summary');
    await waitText('#summary-cards', /agents known/);
    // from the top of the document
    await page.evaluate(() => document.activeElement
                              && document.activeElement.blur());
    const seen = [];
    for (let i = 0; i < 40 && !found; i++) {
        await page.keyboard.press('Tab');
        const at = await page.evaluate(() => {
            const e = document.activeElement;
            return e ? e.tagName + ':' + (e.getAttribute('data-view')
                                          || e.textContent.slice(0, 20)) : '';
        });
        seen.push(at);
        found = at === 'A:groups';
    }
    if (!found) {
        throw new Error('no Groups link within 40 Tabs: ' + seen.join(', '));
    }
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => document.querySelector(
        'nav a[aria-current="page"]').getAttribute('data-view') === 'groups',
        null, { timeout: WAIT });
    await page.keyboard.press('3');
    await page.waitForFunction(() => location.hash === '#/agents', null,
                               { timeout: WAIT });
    /* the view renders once its first API answer is in: '/' before that
     * finds no filter to focus */
    await page.waitForSelector('#filter-attr', { timeout: WAIT });
    await page.keyboard.press('/');
    const focused = await page.evaluate(() => document.activeElement.id);
    if (focused !== 'filter-attr') {
        throw new Error(`/ focused ${focused}`);
    }
});

// --- phone width ---------------------------------------------------------

await check('phone width (390 px): no sideways scrolling of the page',
            async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    const widths = [];
    for (const v of ['summary', 'agents', 'inventory']) {
        await page.goto(BASE + '#/' + v);
        await page.waitForTimeout(300);
        await page.waitForSelector('main table, main .card', {
            timeout: WAIT });
        const w = await page.evaluate(() =>
            document.documentElement.scrollWidth);
        widths.push(`${v} ${w}`);
        if (w > 390) {
            throw new Error(`${v}: the page is ${w} px wide`);
        }
        await shot(`${v}-phone`);
    }
    return widths.join(', ');
});

report(consoleErrors.length === 0, 'no console error',
       consoleErrors.concat(['responses over 399:'], failed).join('\n'));

process.stdout.write(JSON.stringify({ done: true,
                                      api_calls: apiCalls.length }) + '\n');
await browser.close();
