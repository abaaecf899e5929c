import { chromium } from 'playwright-core';
import { Server } from '/work/main/clients/js/test/harness.mjs';
const s = await Server.start('shot', ['--demo']);
const b = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'] });
const p = await (await b.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
await p.goto(s.url + '/');
await p.getByRole('button', { name: 'Staff (sam)' }).click();
await p.waitForTimeout(45000);
await p.screenshot({ path: '/work/main/artifacts/screenshots/staff-demo-45s.png', fullPage: true });
await p.locator('#f-status').selectOption('all');
await p.waitForTimeout(300);
const stalled = p.locator('a.job[data-status="stalled"], a.job[data-status="failed"]').first();
if (await stalled.count()) { await stalled.click(); await p.waitForTimeout(1000); await p.screenshot({ path: '/work/main/artifacts/screenshots/job-demo.png', fullPage: true }); }
await b.close(); await s.stop();
