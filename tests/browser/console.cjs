// End-to-end check of the web console in headless Chromium (Debian's, driven by playwright-core),
// against three running nodes whose APIs serve the console at their root:
//
//   NODE_PATH=$(scripts/setup-browser.sh)/node_modules \
//     node tests/browser/console.cjs --suanli BIN --module JOB.wat --out DIR URL1 URL2 URL3
//
// 1. mesh: node 1's mesh view lists the three node ids (gossip may take a while to converge);
// 2. jobs: a job submitted with `suanli job submit` appears in node 1's jobs view as `succeeded`;
// 3. ledger: the page verifies an entry's inclusion proof against the signed checkpoint, itself
//    (WebCrypto), and the checkpoint's Ed25519 signature;
// 4. page-errors: the page threw no uncaught error.
// Each check prints one line; a screenshot of each view goes to DIR (mesh.png, jobs.png,
// ledger.png). Exit 0 when all pass, 1 with a one-line reason otherwise, 2 on bad usage.
'use strict';

const { execFile } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');

const CHROMIUM = '/usr/bin/chromium';
const MESH_TIMEOUT_MS = 60_000;
const JOB_TIMEOUT_MS = 120_000;
const CHECKPOINT_TIMEOUT_MS = 30_000;
const VERIFY_TIMEOUT_MS = 30_000;
const WATCHDOG_MS = 6 * 60_000; // the whole run, browser start to close

function usage(message) {
  console.error(`console.cjs: ${message}\nusage: node console.cjs --suanli BIN --module JOB.wat --out DIR URL1 URL2 URL3`);
  process.exit(2);
}

function parseArgs(argv) {
  const options = { urls: [] };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i].match(/^--(suanli|module|out)$/)?.[1];
    if (flag) {
      if (i + 1 >= argv.length) usage(`${argv[i]} needs a value`);
      options[flag] = argv[++i];
    } else if (argv[i].startsWith('--')) {
      usage(`unknown option ${argv[i]}`);
    } else {
      options.urls.push(argv[i]);
    }
  }
  for (const flag of ['suanli', 'module', 'out']) if (!options[flag]) usage(`--${flag} is required`);
  if (options.urls.length !== 3) usage(`three console URLs are needed, got ${options.urls.length}`);
  options.urls = options.urls.map((url) => new URL(url));
  return options;
}

// A failed check: its name and the reason, printed as one line.
class CheckFailed extends Error {
  constructor(check, reason) { super(`${check}: ${reason}`); }
}

async function nodeId(url) {
  const at = new URL('/v1/node', url).href;
  let res;
  try {
    res = await fetch(at, { signal: AbortSignal.timeout(10_000) });
  } catch (error) {
    throw new CheckFailed('mesh', `${at}: ${error.cause?.message ?? error.message}`);
  }
  if (!res.ok) throw new CheckFailed('mesh', `${at} answered ${res.status}`);
  return (await res.json()).node_id;
}

function submitJob(suanli, module, api) {
  return new Promise((resolve, reject) => {
    execFile(suanli, ['job', 'submit', '--api', api, module], { timeout: 60_000 }, (error, stdout, stderr) => {
      const jobId = stdout.trim().split('\n').pop();
      if (error) reject(new CheckFailed('jobs', `suanli job submit failed: ${(stderr || error.message).trim()}`));
      else if (!/^[0-9a-f]{64}$/.test(jobId)) reject(new CheckFailed('jobs', `suanli job submit printed no job id: ${stdout.trim()}`));
      else resolve(jobId);
    });
  });
}

// Waits for `predicate(arg)` to hold in the page; on time-out, fails `check` with `reason`.
async function waitFor(page, check, reason, timeout, predicate, arg) {
  try {
    await page.waitForFunction(predicate, arg, { timeout, polling: 250 });
  } catch (error) {
    throw new CheckFailed(check, `${reason} (${error.name === 'TimeoutError' ? `within ${timeout / 1000} s` : error.message})`);
  }
}

const text = (page, selector) => page.locator(selector).first().innerText({ timeout: 5_000 }).catch(() => '');

async function run(options, page, errors) {
  const [url1] = options.urls;
  const api = url1.origin;
  const shot = (name) => page.screenshot({ path: path.join(options.out, name), fullPage: true, timeout: 30_000 });

  // 1. The mesh.
  const ids = await Promise.all(options.urls.map(nodeId));
  await page.goto(new URL('#/mesh', url1).href, { timeout: 30_000 });
  await waitFor(page, 'mesh', `node 1's mesh view does not list all of ${ids.join(', ')}`, MESH_TIMEOUT_MS,
    (want) => want.every((id) => document.querySelector(`[data-testid="mesh-row"][data-node-id="${id}"]`)), ids);
  await shot('mesh.png');
  console.log(`ok mesh: node 1's mesh view lists all three nodes (${ids.join(', ')})`);

  // 2. A job from the CLI, followed in the jobs view.
  await page.click('[data-testid="tab-jobs"]');
  await waitFor(page, 'jobs', 'the jobs view did not load', 30_000,
    () => document.querySelector('[data-testid="jobs-table"], [data-testid="error"]'));
  const loadError = await text(page, '[data-testid="view"] [data-testid="error"]');
  if (loadError) throw new CheckFailed('jobs', `the jobs view shows an error: ${loadError}`);
  const jobId = await submitJob(options.suanli, options.module, api);
  await waitFor(page, 'jobs', `job ${jobId} did not show as succeeded in the jobs view`, JOB_TIMEOUT_MS, (id) => {
    const row = document.querySelector(`[data-testid="job-row"][data-job-id="${id}"]`);
    return row?.dataset.state === 'succeeded' && row.innerText.includes('succeeded');
  }, jobId);
  await page.click(`[data-testid="job-row"][data-job-id="${jobId}"]`);
  await waitFor(page, 'jobs', `job ${jobId}'s detail did not open`, 30_000,
    (id) => document.querySelector(`[data-testid="job-detail"][data-job-id="${id}"]`), jobId);
  await shot('jobs.png');
  console.log(`ok jobs: job ${jobId}, submitted with suanli job submit, shows succeeded in the jobs view`);

  // 3. The ledger: the latest entry the signed checkpoint covers, verified in the page.
  await page.click('[data-testid="tab-ledger"]');
  await waitFor(page, 'ledger', 'no checkpoint covering an entry was shown', CHECKPOINT_TIMEOUT_MS, () => {
    const size = Number(document.querySelector('[data-testid="checkpoint"]')?.dataset.size ?? 0);
    return size > 0 && document.querySelector(`[data-testid="verify-inclusion"][data-index="${size - 1}"]`);
  });
  const signature = await text(page, '[data-testid="checkpoint-signature"]');
  if (await page.locator('[data-testid="checkpoint-signature"][data-state="ok"]').count() !== 1) {
    throw new CheckFailed('ledger', `the checkpoint's signature did not verify in the page: ${signature}`);
  }
  const size = Number(await page.getAttribute('[data-testid="checkpoint"]', 'data-size'));
  const index = size - 1;
  await page.click(`[data-testid="verify-inclusion"][data-index="${index}"]`);
  await waitFor(page, 'ledger', `the inclusion check of entry ${index} did not finish`, VERIFY_TIMEOUT_MS,
    (i) => document.querySelector(`[data-testid="inclusion-result"][data-index="${i}"]`), index);
  const result = `[data-testid="inclusion-result"][data-index="${index}"]`;
  const verdict = await text(page, result);
  await shot('ledger.png');
  if (await page.getAttribute(result, 'data-state') !== 'ok') {
    throw new CheckFailed('ledger', `entry ${index}'s inclusion proof did not verify: ${verdict}`);
  }
  console.log(`ok ledger: entry ${index} of ${size}: ${verdict.replace(/^✓ /, '')}; checkpoint ${signature.replace(/^✓ /, '')}`);

  // 4. Nothing thrown.
  if (errors.length) throw new CheckFailed('page-errors', errors.join(' | '));
  console.log('ok page-errors: the page threw no uncaught error');
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  fs.mkdirSync(options.out, { recursive: true });
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'suanli-console-'));
  const watchdog = setTimeout(() => {
    console.log(`FAIL watchdog: the run took longer than ${WATCHDOG_MS / 1000} s`);
    process.exit(1); // playwright kills the browser it started when the process exits
  }, WATCHDOG_MS);
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      timeout: 60_000,
      viewport: { width: 1440, height: 900 },
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    const page = context.pages()[0] ?? await context.newPage();
    page.setDefaultTimeout(15_000);
    const errors = [];
    page.on('pageerror', (error) => errors.push(error.message));
    await run(options, page, errors);
    return 0;
  } catch (error) {
    const reason = error instanceof CheckFailed ? error.message : `run: ${error.message.split('\n')[0]}`;
    console.log(`FAIL ${reason.trim().replace(/\s*\n\s*/g, ' | ')}`);
    return 1;
  } finally {
    await context?.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
    clearTimeout(watchdog);
  }
}

main().then((code) => process.exit(code));
