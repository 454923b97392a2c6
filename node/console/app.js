// suanli web console: one page over this node's HTTP API (docs/api.md), same origin, no
// dependencies. Views are hash routes (#/mesh, #/jobs[/ID], #/ledger[/peer/ID], #/balances,
// #/transparency); each fills its slots from the API and shows any failure in place. Inclusion
// proofs and checkpoint signatures are checked here, with WebCrypto (RFC 9162 §2.1.3.2; C2SP
// signed notes, Ed25519), against nothing but the bytes the node serves. Everything from the API
// is inserted as text, never as HTML. Stable `data-testid`s serve tests/browser/console.cjs.
'use strict';

const TOKEN_KEY = 'suanli.token';
const FETCH_TIMEOUT_MS = 20000;
const JOB_PAGES = 20; // at most 20 pages of 500 jobs are read per refresh
const JOBS_SHOWN = 200;
const LEDGER_PAGE = 50;
const PEER_SCAN_PAGES = 64; // at most 64 pages of 1024 entries are scanned for a peer's entries

// ---- DOM helpers ------------------------------------------------------------------------------

function h(tag, props, ...kids) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value == null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (key === 'testid') el.dataset.testid = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid != null && kid !== false) el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}

const section = (title, ...kids) => h('section', null, h('h2', null, title), ...kids);
const table = (testid, heads, rows, empty = 'none') => rows.length
  ? h('div', { class: 'scroll' }, h('table', { testid },
    h('thead', null, h('tr', null, heads.map((x) => h('th', null, x)))), h('tbody', null, rows)))
  : h('p', { class: 'muted', testid }, empty);
const kv = (pairs) => h('dl', { class: 'kv' },
  pairs.filter(([, v]) => v != null && v !== '').map(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
const json = (label, value) => h('details', { class: 'json' }, h('summary', null, label),
  h('pre', null, typeof value === 'string' ? value : JSON.stringify(value, null, 2)));
const badge = (text, kind = text) => h('span', { class: `badge ${kind}` }, text);

// A node id, job id or hash: shortened unless `full`, the whole text in its title (on hover).
function ident(text, full = false) {
  if (text == null) return h('span', { class: 'muted' }, '–');
  const s = String(text);
  const shown = full || s.length <= 20 ? s : `${s.slice(0, 12)}…${s.slice(-6)}`;
  return h('code', { class: 'id', title: s }, shown);
}

// Replaces an element's children, keeping open whichever <details> were open (by position).
function replace(el, ...kids) {
  const open = [...el.querySelectorAll('details')].map((d) => d.open);
  el.replaceChildren(...kids.flat().filter((kid) => kid != null && kid !== false));
  el.querySelectorAll('details').forEach((d, i) => { if (open[i]) d.open = true; });
}

// ---- formatting -------------------------------------------------------------------------------

const num = (n) => (n == null ? '–' : Number(n).toLocaleString('en-US'));
const micro = (n) => (n == null ? '–' : `${num(n)} µ`);
const time = (ms) => (ms ? new Date(ms).toISOString().replace('T', ' ').slice(0, 19) + 'Z' : '–');
function bytes(n) {
  if (n == null) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  for (; n >= 1024 && i < units.length - 1; i++) n /= 1024;
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}
function duration(ms) {
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return s < 172800 ? `${Math.round(s / 3600)} h` : `${Math.round(s / 86400)} d`;
}
const gpus = (list) => (list?.length ? list.map((g) => `${g.count}× ${g.model} (${bytes(g.memory_bytes)})`).join(', ') : '–');

// ---- the API ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// GET path; `as` is 'json', 'text' or 'bytes'. Errors carry the API's own message.
async function api(path, as = 'json') {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  let res;
  try {
    res = await fetch(path, { headers, cache: 'no-store', signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
  } catch (e) {
    throw new ApiError(0, `${path}: ${e.name === 'TimeoutError' ? `no answer within ${FETCH_TIMEOUT_MS / 1000} s` : e.message}`);
  }
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`;
    try {
      const body = await res.json();
      if (body?.error?.message) message = `${res.status} ${body.error.code}: ${body.error.message}`;
    } catch { /* not this API's JSON error: keep the status line */ }
    throw new ApiError(res.status, `${path}: ${message}`);
  }
  if (as === 'text') return res.text();
  if (as === 'bytes') return new Uint8Array(await res.arrayBuffer());
  return res.json();
}

// A failure, in place. A 401 also asks for a token (a 403 is `forbidden_host`: no token helps).
function errorBox(error) {
  const needsToken = error?.status === 401;
  if (needsToken) document.getElementById('token-form').classList.add('wanted');
  return h('div', { class: 'error', testid: 'error', 'data-status': error?.status ?? '' },
    String(error?.message ?? error),
    needsToken ? h('div', null, 'This needs a valid API token: enter one above (`suanli token create` on the node).') : null);
}

// Fills `slot` with what `build` returns (or its error), unless the slot left the page meanwhile.
async function fill(slot, build) {
  let kids;
  try { kids = await build(); } catch (e) { kids = errorBox(e); }
  if (slot.isConnected) replace(slot, kids);
}
const settled = (result, render) => () => {
  if (result.status === 'rejected') throw result.reason;
  return render(result.value);
};

// Runs `task` now and then every `ms` while `anchor` is on the page (one run at a time).
function every(ms, anchor, task) {
  const tick = async () => {
    if (!anchor.isConnected) return;
    await task().catch(() => {});
    setTimeout(tick, ms);
  };
  tick();
}

// ---- bytes, hashes, signatures ----------------------------------------------------------------

const utf8 = (s) => new TextEncoder().encode(s);
const b64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
const hex = (b) => [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
const equal = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
const concat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => (out.set(p, at), at + p.length), 0);
  return out;
};
function subtle() {
  if (!globalThis.crypto?.subtle) {
    throw new Error('WebCrypto is not available: browsers offer it only to secure contexts '
      + '(https, or http://localhost / 127.0.0.1); open the console through an SSH tunnel or TLS');
  }
  return crypto.subtle;
}
const sha256 = async (data) => new Uint8Array(await subtle().digest('SHA-256', data));
const leafHash = (entry) => sha256(concat([0], entry));
const nodeHash = (left, right) => sha256(concat([1], left, right));

// RFC 9162 §2.1.3.2: folds the leaf hash up the proof; returns the root it leads to.
async function inclusionRoot(index, size, leaf, path) {
  if (index >= size) throw new Error(`leaf ${index} is not below the tree size ${size}`);
  let fn = index, sn = size - 1, r = leaf;
  for (const p of path) {
    if (sn === 0) throw new Error('the proof is longer than the tree is deep');
    if (fn % 2 === 1 || fn === sn) {
      r = await nodeHash(p, r);
      while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
    } else {
      r = await nodeHash(r, p);
    }
    fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
  }
  if (sn !== 0) throw new Error('the proof is shorter than the tree is deep');
  return r;
}

// Checks that entry `index`'s stored bytes are leaf `index` of the checkpoint's tree.
async function verifyInclusion(index, checkpoint) {
  const size = checkpoint.size;
  if (index >= size) {
    throw new Error(`entry ${index} is not in the latest checkpoint yet (size ${size}); try again after the next one`);
  }
  const [raw, proof] = await Promise.all([
    api(`/v1/ledger/entry/${index}?raw=1`, 'bytes'),
    api(`/v1/ledger/proof/inclusion?index=${index}&size=${size}`),
  ]);
  if (proof.leafIdx !== index || proof.treeSize !== size) {
    throw new Error(`the proof is for leaf ${proof.leafIdx} of size ${proof.treeSize}, not ${index} of ${size}`);
  }
  const leaf = await leafHash(raw);
  if (!equal(leaf, b64(proof.leafHash))) throw new Error("the entry's bytes do not hash to the proof's leaf");
  const root = await inclusionRoot(index, size, leaf, proof.proof.map(b64));
  if (!equal(root, checkpoint.root)) {
    throw new Error(`the proof leads to root ${hex(root)}, not the checkpoint's ${hex(checkpoint.root)}`);
  }
  return `verified: SHA-256(0x00 ‖ ${raw.length} bytes) is leaf ${index} of the tree of size ${size} `
    + `whose root the checkpoint signs (${proof.proof.length} proof hashes)`;
}

const B58 = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz';
function base58(text) {
  let n = 0n;
  for (const c of text) {
    const digit = B58.indexOf(c);
    if (digit < 0) throw new Error(`not base58: ${text}`);
    n = n * 58n + BigInt(digit);
  }
  const out = [];
  for (; n > 0n; n >>= 8n) out.unshift(Number(n & 255n));
  const zeros = text.length - text.replace(/^1+/, '').length;
  return new Uint8Array([...new Array(zeros).fill(0), ...out]);
}

// A C2SP checkpoint (signed note): origin, size, root; the signature lines after a blank line.
function parseNote(text) {
  const split = text.indexOf('\n\n');
  if (split < 0) throw new Error('not a signed note: no blank line before the signatures');
  const body = text.slice(0, split + 1);
  const [origin, size, root] = body.split('\n');
  if (!/^\d+$/.test(size ?? '')) throw new Error(`not a checkpoint: size ${JSON.stringify(size)}`);
  const signatures = text.slice(split + 2).split('\n').filter(Boolean).map((line) => {
    const m = /^\u2014 (\S+) (\S+)$/.exec(line);
    if (!m) throw new Error(`malformed signature line: ${line}`);
    return { name: m[1], blob: b64(m[2]) };
  });
  return { text, body, origin, size: Number(size), rootB64: root, root: b64(root), signatures };
}

// The origin's Ed25519 signature: the key is inside the node id (00 24 08 01 12 20 ‖ key).
async function verifyNote(note) {
  const peerId = base58(note.origin);
  if (peerId.length !== 38 || !equal(peerId.slice(0, 6), [0, 0x24, 8, 1, 0x12, 0x20])) {
    throw new Error('the origin is not an Ed25519 node id');
  }
  const key = peerId.slice(6);
  const keyId = (await sha256(concat(utf8(`${note.origin}\n`), [1], key))).slice(0, 4);
  const line = note.signatures.find((s) => s.name === note.origin && equal(s.blob.slice(0, 4), keyId));
  if (!line) throw new Error('no signature by the origin’s key');
  let pub;
  try {
    pub = await subtle().importKey('raw', key, { name: 'Ed25519' }, false, ['verify']);
  } catch (e) {
    throw new Error(`this browser's WebCrypto cannot check Ed25519 (${e.name}); the signature was not checked`);
  }
  const ok = await subtle().verify({ name: 'Ed25519' }, pub, line.blob.slice(4), utf8(note.body));
  if (!ok) throw new Error('the Ed25519 signature does not verify');
  return `signature verified (Ed25519, key id ${hex(keyId)})`;
}

// Runs a check and renders its outcome as a status element.
async function check(testid, attrs, run) {
  try {
    return h('span', { class: 'check ok', testid, 'data-state': 'ok', ...attrs }, `✓ ${await run()}`);
  } catch (e) {
    return h('span', { class: 'check fail', testid, 'data-state': 'fail', ...attrs }, `✗ ${e.message}`);
  }
}

// ---- mesh -------------------------------------------------------------------------------------

function renderMesh(main) {
  const me = h('div'), mesh = h('div'), peers = h('div');
  main.append(section('This node', me), section('Mesh: every node in this node\'s capacity view', mesh),
    section('Connected peers', peers));
  every(5000, mesh, async () => {
    const [node, nodes, peerList] = await Promise.allSettled([api('/v1/node'), api('/v1/mesh'), api('/v1/peers')]);
    const self = node.value?.node_id;
    const linked = new Map((peerList.value ?? []).map((p) => [p.node_id, p]));
    fill(me, settled(node, thisNode));
    fill(mesh, settled(nodes, (list) => table('mesh-table',
      ['node', 'region', 'version', 'cores free', 'memory free', 'GPUs', 'executors',
        'µ per job · M fuel · CPU-s', 'load', 'models', 'cluster', 'advert age · expires'],
      list.map((n) => meshRow(n, self, linked.get(n.node_id))), 'no node in the capacity view yet')));
    fill(peers, settled(peerList, (list) => table('peers-table',
      ['node', 'addresses', 'agent', 'conns', 'score', 'standing'],
      list.map((p) => h('tr', { testid: 'peer-row', 'data-node-id': p.node_id },
        h('td', null, ident(p.node_id, true)), h('td', null, p.addrs.join(' ')), h('td', null, p.agent_version ?? '–'),
        h('td', { class: 'num' }, p.connections),
        h('td', { class: 'num' }, p.standing ? p.standing.score.toFixed(2) : '–'),
        h('td', null, p.standing?.distrusted ? badge('distrusted', 'failed') : null,
          p.standing?.equivocated ? badge('equivocated', 'failed') : null,
          (p.standing?.reasons ?? []).join('; ')))), 'not connected to any peer')));
  });
}

function thisNode(n) {
  const s = n.storage;
  document.getElementById('node-summary').replaceChildren(ident(n.node_id), ` v${n.version}`);
  return kv([
    ['node id', ident(n.node_id, true)], ['version', n.version], ['region', n.region],
    ['uptime', duration(n.uptime_ms)], ['listening on', n.listen_addrs.join(' ')],
    ['capacity', `${n.capacity.cpu_cores} cores, ${bytes(n.capacity.memory_bytes)}, GPUs: ${gpus(n.capacity.gpus)}`],
    ['executors', n.executors.join(', ')],
    ['prices', `${micro(n.prices.base)} per job, ${micro(n.prices.per_million_fuel)} per M fuel, `
      + `${micro(n.prices.per_cpu_second)} per CPU-s`],
    ['storage', [badge(s.state, s.state === 'healthy' ? 'succeeded' : 'failed'),
      ` ${bytes(s.available_bytes)} free (reserve ${bytes(s.min_free_bytes)})`, s.reason ? ` — ${s.reason}` : '']],
    ['market', `${n.market.jobs_in_flight} jobs in flight, ${n.market.contracts_driven} contracts driven, `
      + `${n.market.notifications_pending} notifications pending`],
    ['gossip adverts', `${n.gossip.accepted} accepted, ${n.gossip.ignored} ignored, ${n.gossip.rejected} rejected`],
  ]);
}

function meshRow(n, self, peer) {
  const c = n.cluster;
  const load = Math.max(0, Math.min(1, n.load));
  const bar = h('span', { class: 'bar' }, h('span'));
  bar.firstChild.style.width = `${load * 100}%`;
  return h('tr', { testid: 'mesh-row', 'data-node-id': n.node_id },
    h('td', null, ident(n.node_id), ' ', n.node_id === self ? badge('this node', 'self')
      : peer ? badge(`peer ${peer.standing ? peer.standing.score.toFixed(2) : ''}`, 'peer') : badge('via gossip', 'far')),
    h('td', null, n.region), h('td', null, n.version),
    h('td', { class: 'num' }, `${n.free.cpu_cores} / ${n.cpu_cores}`),
    h('td', { class: 'num' }, `${bytes(n.free.memory_bytes)} / ${bytes(n.memory_bytes)}`),
    h('td', null, gpus(n.gpus)), h('td', null, n.executors.join(', ')),
    h('td', { class: 'num' }, `${num(n.prices.base)} · ${num(n.prices.per_million_fuel)} · ${num(n.prices.per_cpu_second)}`),
    h('td', null, bar, ` ${Math.round(load * 100)}%`),
    h('td', null, n.models.length ? n.models.map((m) => h('div', { title: m.sha256 ?? '' },
      `${m.name} (${m.family}, ${m.quantisation}, ${num(m.context)} ctx, ${m.decode_tokens_per_s} tok/s, `
      + `${num(m.price_per_million_prompt)}/${num(m.price_per_million_completion)} µ per M)`)) : '–'),
    h('td', null, c ? `${c.scheduler}: ${c.nodes} nodes, ${c.free.cpu_cores}/${c.total.cpu_cores} cores free, `
      + `${c.pending_jobs} queued, ${c.running_jobs} running` : '–'),
    h('td', { class: 'muted' }, `${duration(n.age_ms)} · ${duration(n.expires_in_ms)}`));
}

// ---- jobs -------------------------------------------------------------------------------------

function renderJobs(main, [selected]) {
  const list = h('div'), detail = h('div'), events = h('div');
  main.append(section('Jobs submitted here (newest first)', list));
  if (selected) {
    main.append(section('Job', h('p', null, h('a', { href: '#/jobs' }, '← all jobs')), detail, events));
    watchEvents(selected, detail, events);
  }
  const sessions = h('div', { testid: 'chat-sessions' });
  main.append(section('Chat sessions: standing contracts for model requests, open now', sessions));
  every(2000, sessions, () => fill(sessions, async () => {
    const list = await api('/v1/sessions');
    return table('sessions-table', ['contract', 'this node', 'peer', 'model', 'tokens used / budget', 'reserved', 'in flight', ''],
      list.map((c) => h('tr', { testid: 'session-row', 'data-contract-id': c.contract_id },
        h('td', null, ident(c.contract_id)), h('td', null, c.side), h('td', null, ident(c.peer)),
        h('td', null, c.model), h('td', { class: 'num' }, `${num(c.used_tokens)} / ${num(c.budget_tokens)}`),
        h('td', { class: 'num' }, num(c.reserved_tokens)), h('td', { class: 'num' }, c.in_flight),
        h('td', null, c.closing ? badge('closing') : badge('open', 'succeeded')))),
      'no model session is open (their usage entries stay in the ledger)');
  }));
  // Every job read so far, oldest first (the API's order). The first refresh reads them all; the
  // next ones re-read only from just before the newest JOBS_SHOWN on, which also brings new jobs.
  let jobs = [];
  every(2000, list, async () => {
    await fill(list, async () => {
      const keep = Math.max(0, jobs.length - JOBS_SHOWN);
      let after = keep ? jobs[keep - 1].job_id : null;
      const fresh = [];
      try {
        for (let page = 0; page < JOB_PAGES; page++) {
          const got = await api(`/v1/jobs?limit=500${after ? `&after=${after}` : ''}`);
          fresh.push(...got.jobs);
          if (!(after = got.next)) break;
        }
      } catch (e) {
        jobs = [];
        throw e;
      }
      jobs = [...jobs.slice(0, keep), ...fresh];
      const newest = jobs.slice(-JOBS_SHOWN).reverse();
      return [
        jobs.length ? h('p', { class: 'muted' }, `${jobs.length} jobs${after ? ' (more not read yet)' : ''}; `
          + `showing the newest ${newest.length}. Select one for its attempts and contract.`) : null,
        table('jobs-table', ['job', 'state', 'created', 'provider', 'cost (µ)', 'attempts', 'error'],
          newest.map((j) => h('tr', {
            testid: 'job-row', 'data-job-id': j.job_id, 'data-state': j.state,
            class: j.job_id === selected ? 'selected clickable' : 'clickable',
            onclick: () => { location.hash = `#/jobs/${j.job_id}`; },
          }, h('td', null, ident(j.job_id)), h('td', null, badge(j.state), j.replicas ? ` ×${j.replicas.count}` : ''),
          h('td', null, time(j.created_at_ms)), h('td', null, ident(j.provider)), h('td', { class: 'num' }, num(j.cost)),
          h('td', { class: 'num' }, j.attempts.length), h('td', null, j.error ? j.error.code : ''))), 'no jobs yet'),
      ];
    });
    if (selected) await fill(detail, async () => jobDetail(await api(`/v1/jobs/${selected}`)));
  });
}

function jobDetail(j) {
  const u = j.usage;
  const output = h('div');
  return h('div', { testid: 'job-detail', 'data-job-id': j.job_id, 'data-state': j.state },
    kv([
      ['job', ident(j.job_id, true)], ['state', badge(j.state)],
      ['error', j.error ? `${j.error.code}: ${j.error.message}` : null],
      ['provider', ident(j.provider, true)], ['contract', ident(j.contract_id, true)],
      ['exit code', j.exit_code], ['cost', j.cost == null ? null : micro(j.cost)], ['max price', micro(j.max_price)],
      ['usage', u ? `${num(u.fuel)} fuel, ${u.wall_ms} ms, ${bytes(u.memory_bytes)} memory, ${bytes(u.output_bytes)} output`
        + (u.prompt_tokens || u.completion_tokens ? `, ${u.prompt_tokens} + ${u.completion_tokens} tokens` : '')
        + (u.cluster ? `; cluster job ${u.cluster.job_id}: ${u.cluster.cpus} CPUs, ${num(u.cluster.cpu_ms)} CPU-ms` : '')
        : null],
      ['limits', `${num(j.limits.fuel)} fuel, ${bytes(j.limits.memory_bytes)}, ${j.limits.timeout_ms} ms, `
        + `${bytes(j.limits.max_output_bytes)} output, ${j.limits.tasks} task(s)`],
      ['args', j.args.length ? j.args.join(' ') : null], ['module', ident(j.module_hash, true)],
      ['output hash', j.output_hash ? [ident(j.output_hash, true), ' ', h('button', {
        testid: 'job-output',
        onclick: () => fill(output, async () => {
          const stdout = await api(`/v1/jobs/${j.job_id}/output`, 'bytes');
          return h('pre', { class: 'output' }, new TextDecoder().decode(stdout.slice(0, 65536)));
        }),
      }, 'show output')] : null],
      ['group', j.group ? h('a', { href: `#/jobs/${j.group}` }, ident(j.group)) : null],
      ['API token', j.api_token], ['created', time(j.created_at_ms)], ['updated', time(j.updated_at_ms)],
    ]),
    output,
    h('h3', null, 'Attempts'),
    table('attempts-table', ['at', 'provider', 'outcome', 'reason', 'message', 'contract'],
      j.attempts.map((a) => h('tr', { testid: 'attempt-row' }, h('td', null, time(a.at_ms)), h('td', null, ident(a.provider)),
        h('td', null, badge(a.outcome)), h('td', null, a.reason ?? ''), h('td', null, a.message),
        h('td', null, ident(a.contract_id))))),
    j.replicas ? [h('h3', null, `Replicas: ${j.replicas.count}${j.replicas.spot_check ? ' (spot check)' : ''}`),
      table('replicas-table', ['run', 'state', 'provider', 'exit', 'output hash', 'error'],
        j.replicas.runs.map((r) => h('tr', null, h('td', null, h('a', { href: `#/jobs/${r.job_id}` }, ident(r.job_id))),
          h('td', null, badge(r.state), j.replicas.odd.includes(r.provider) ? badge('odd', 'failed') : ''),
          h('td', null, ident(r.provider)), h('td', null, r.exit_code ?? ''), h('td', null, ident(r.output_hash)),
          h('td', null, r.error ? `${r.error.code}: ${r.error.message}` : '')))),
      j.replicas.evidence.length ? json(`evidence (${j.replicas.evidence.length})`, j.replicas.evidence) : null] : null,
    json('the whole answer (JSON)', j));
}

// Live events of one job over SSE, where the node serves them (read with fetch, so that the
// token is sent): `snapshot` and `end` carry the whole job and redraw `detail` at once; every
// other event is one step (`quote`, `offer`, `decline`, `contract`, `running`, `receipt`,
// `settlement`, `failover`), listed with its fields. Without a stream (404) the 2 s poll is all.
async function watchEvents(jobId, detail, slot) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const stop = new AbortController();
  let res;
  try {
    res = await fetch(`/v1/jobs/${jobId}/events`, {
      headers: { Accept: 'text/event-stream', ...(token ? { Authorization: `Bearer ${token}` } : {}) },
      signal: stop.signal,
    });
  } catch { return; }
  if (!res.ok || !(res.headers.get('content-type') ?? '').startsWith('text/event-stream')) {
    stop.abort();
    return;
  }
  const list = h('ol', { class: 'events', testid: 'job-events' });
  slot.replaceChildren(h('h3', null, 'Live events'), list);
  const show = (name, data) => {
    if (name === 'snapshot' || name === 'end') {
      if (detail.isConnected && data.job_id) replace(detail, jobDetail(data));
      return `${name === 'end' ? 'final' : 'as it stands'}: ${data.state}`;
    }
    const isId = (v) => typeof v === 'string' && /^([0-9a-f]{64}|12D3KooW\w+)$/.test(v);
    return Object.entries(data).filter(([key]) => key !== 'event' && key !== 'job_id')
      .map(([key, v], i) => [i ? ', ' : '', `${key} `, isId(v) ? ident(v)
        : Array.isArray(v) ? String(v.length) : typeof v === 'string' ? v : JSON.stringify(v)]);
  };
  const watchdog = setInterval(() => { if (!slot.isConnected) stop.abort(); }, 1000);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  try {
    for (let reads = 0; reads < 10000 && slot.isConnected; reads++) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      for (let end; (end = buffer.indexOf('\n\n')) >= 0; buffer = buffer.slice(end + 2)) {
        const block = buffer.slice(0, end);
        const name = /^event: ?(.*)$/m.exec(block)?.[1] ?? 'message';
        const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
        if (!data) continue; // a keep-alive comment
        let text;
        try { text = show(name, JSON.parse(data)); } catch { text = data; }
        list.append(h('li', { 'data-event': name }, h('span', { class: 'muted' }, time(Date.now()).slice(11, 19)), ' ',
          h('strong', null, name), ' ', text));
      }
    }
  } catch { /* the stream ended or the view closed */ }
  clearInterval(watchdog);
  stop.abort();
}

// ---- ledger -----------------------------------------------------------------------------------

let checkpoint = null; // the latest checkpoint shown: its parsed note, signature check, and whether it passed

function renderLedger(main, [mode, arg]) {
  const peer = mode === 'peer' ? arg : null;
  let from = null; // first index shown; null: the newest page
  const cp = h('div'), entries = h('div');
  main.append(section('Checkpoint', cp),
    section(peer ? 'Entries of contracts with one peer' : 'Entries', entries));
  every(5000, cp, () => fill(cp, async () => {
    const text = await api('/v1/ledger/checkpoint', 'text');
    if (checkpoint?.note.text !== text) {
      const note = parseNote(text);
      const self = (await api('/v1/node')).node_id;
      const signature = await check('checkpoint-signature', null, async () => {
        if (note.origin !== self) throw new Error(`signed by ${note.origin}, not by this node (${self})`);
        return verifyNote(note);
      });
      checkpoint = { note, signature, signed: signature.dataset.state === 'ok' };
    }
    const { note, signature } = checkpoint;
    return h('div', { testid: 'checkpoint', 'data-size': note.size, 'data-root': hex(note.root) }, kv([
      ['origin', ident(note.origin, true)], ['tree size', num(note.size)],
      ['root', [h('code', null, note.rootB64), ' ', h('span', { class: 'muted' }, `(hex ${hex(note.root)})`)]],
      ['signature', signature],
    ]), json('the signed note', note.text));
  }));
  const load = () => fill(entries, async () => {
    let page;
    let scanned = '';
    if (peer) {
      page = { entries: [] };
      let at = 0;
      for (let n = 0; n < PEER_SCAN_PAGES; n++) {
        const got = await api(`/v1/ledger?from=${at}&limit=1024`);
        page.size = got.size;
        page.entries.push(...got.entries.filter((e) => e.requester === peer || e.provider === peer));
        at += got.entries.length;
        if (!got.entries.length || at >= got.size) break;
      }
      scanned = `${page.entries.length} entries with ${peer} among the first ${num(at)} of ${num(page.size)}`;
    } else {
      if (from == null) from = Math.max(0, (await api('/v1/ledger?limit=1')).size - LEDGER_PAGE);
      page = await api(`/v1/ledger?from=${from}&limit=${LEDGER_PAGE}`);
    }
    const last = page.entries.at(-1)?.index;
    const nav = peer ? h('p', null, h('a', { href: '#/ledger' }, '← whole ledger'), ' ', h('span', { class: 'muted' }, scanned))
      : h('p', { class: 'pager' }, `entries ${page.entries.length ? `${from}–${last}` : 'none'} of ${num(page.size)} `,
        h('button', { disabled: from === 0, onclick: () => { from = Math.max(0, from - LEDGER_PAGE); load(); } }, '← older'),
        h('button', { disabled: last == null || last + 1 >= page.size, onclick: () => { from += LEDGER_PAGE; load(); } }, 'newer →'),
        h('button', { testid: 'ledger-newest', onclick: () => { from = null; load(); } }, 'newest'));
    return [nav, table('ledger-table',
      ['#', 'time', 'kind', 'contract', 'requester', 'provider', 'cost (µ)', 'outcome / detail', 'decoded', 'inclusion'],
      [...page.entries].reverse().map(entryRow), 'no entries')];
  });
  load();
}

function entryRow(e) {
  const result = h('span');
  const verify = h('button', {
    testid: 'verify-inclusion', 'data-index': e.index,
    onclick: async () => {
      verify.disabled = true;
      result.replaceChildren('checking…');
      result.replaceChildren(await check('inclusion-result', { 'data-index': e.index }, () => {
        if (!checkpoint) throw new Error('no checkpoint loaded yet');
        if (!checkpoint.signed) throw new Error('the checkpoint\'s signature did not verify: its root proves nothing');
        return verifyInclusion(e.index, checkpoint.note);
      }));
      verify.disabled = false;
    },
  }, 'verify inclusion');
  const usage = e.fuel == null ? null
    : `${num(e.fuel)} fuel, ${e.wall_time_ms} ms, ${bytes(e.memory_bytes)}, ${bytes(e.output_bytes)} out`;
  return h('tr', { testid: 'ledger-row', 'data-index': e.index, 'data-kind': e.kind },
    h('td', { class: 'num' }, e.index), h('td', null, time(e.timestamp_ms)), h('td', null, badge(e.kind, 'kind')),
    h('td', null, ident(e.contract_id)), h('td', null, ident(e.requester)), h('td', null, ident(e.provider)),
    h('td', { class: 'num' }, num(e.cost)),
    h('td', { class: 'wrap' }, [e.outcome, e.detail, usage].filter(Boolean).join(' — ')),
    h('td', null, json('entry', e)), h('td', { class: 'verify' }, verify, ' ', result));
}

// ---- balances and transparency ----------------------------------------------------------------

function renderBalances(main) {
  const slot = h('div');
  main.append(section('Balances: net credits per peer, from the settlements in this node\'s ledger', slot));
  fill(slot, async () => {
    const list = await api('/v1/balances');
    return table('balances-table', ['peer', 'net (µ)', '', 'settlements', 'signed entries'],
      list.map((b) => h('tr', { testid: 'balance-row', 'data-node-id': b.node_id },
        h('td', null, ident(b.node_id, true)), h('td', { class: b.net_micro < 0 ? 'num neg' : 'num' }, num(b.net_micro)),
        h('td', { class: 'muted' }, b.net_micro > 0 ? 'owes this node' : b.net_micro < 0 ? 'this node owes' : 'even'),
        h('td', { class: 'num' }, b.settlements),
        h('td', null, h('a', { href: `#/ledger/peer/${b.node_id}` }, 'entries →')))), 'no settlements yet');
  });
}

function renderTransparency(main) {
  const witnessed = h('div'), equivocations = h('div'), evidence = h('div');
  main.append(section('Checkpoints this node witnessed', witnessed),
    section('Equivocation proofs', equivocations),
    section('Evidence against replica providers', evidence));
  fill(witnessed, async () => {
    const list = await api('/v1/ledger/witnessed');
    const rows = await Promise.all(list.map(async (w) => h('tr', { testid: 'witnessed-row', 'data-node-id': w.node_id },
      h('td', null, ident(w.node_id, true)), h('td', { class: 'num' }, num(w.size)), h('td', null, ident(w.root)),
      h('td', null, await check('witnessed-signature', null, async () => {
        const note = parseNote(w.note);
        if (note.origin !== w.node_id) throw new Error(`signed as ${note.origin}`);
        if (note.size !== w.size || hex(note.root) !== w.root) throw new Error('the note does not say this size and root');
        return verifyNote(note);
      })), h('td', null, json('note', w.note)))));
    return table('witnessed-table', ['node', 'size', 'root', 'signature (checked here)', 'signed note'], rows,
      'no checkpoint witnessed yet');
  });
  fill(equivocations, async () => {
    const list = await api('/v1/ledger/equivocations');
    return table('equivocations-table', ['node', 'first note', 'second note', 'fork proof'],
      list.map((e) => h('tr', { testid: 'equivocation-row' }, h('td', null, ident(e.node_id, true)),
        h('td', null, json('first', e.proof.first)), h('td', null, json('second', e.proof.second)),
        h('td', null, e.proof.fork ? json(`prefix root ${e.proof.fork.prefix_root}`, e.proof.fork) : 'same size, different roots'))),
      'none: no node this one watches has signed two inconsistent checkpoints');
  });
  fill(evidence, async () => {
    const page = await api('/v1/evidence?limit=200');
    return [table('evidence-table', ['at', 'kind', 'group', 'odd provider', 'contract', 'majority', 'verified', 'documents'],
      page.evidence.map((e) => h('tr', { testid: 'evidence-row' }, h('td', null, time(e.at_ms)), h('td', null, e.kind),
        h('td', null, e.kind === 'job' ? h('a', { href: `#/jobs/${e.group}` }, ident(e.group)) : ident(e.group)),
        h('td', null, ident(e.provider)), h('td', null, ident(e.contract_id)),
        h('td', null, e.majority.map((m) => ident(m))),
        h('td', null, e.verified ? badge('verified', 'succeeded') : badge('does not verify', 'failed')),
        h('td', null, json(`${e.evidence.length / 2} bytes (hex)`, e.evidence)))), 'none'),
    page.next ? h('p', { class: 'muted' }, 'More evidence exists than is shown (the first 200).') : null];
  });
}

// ---- the token, routing -----------------------------------------------------------------------

const views = {
  mesh: renderMesh, jobs: renderJobs, ledger: renderLedger, balances: renderBalances, transparency: renderTransparency,
};

function route() {
  const [name, ...rest] = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  const view = views[name] ? name : 'mesh';
  document.querySelectorAll('#tabs a').forEach((a) => a.classList.toggle('active', a.dataset.view === view));
  const main = document.getElementById('view');
  main.dataset.view = view;
  main.replaceChildren();
  views[view](main, rest);
}

function showToken() {
  const set = Boolean(sessionStorage.getItem(TOKEN_KEY));
  document.getElementById('token-state').textContent = set ? 'token set (this tab only)' : 'no token';
  document.getElementById('token').value = '';
}

document.getElementById('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const value = document.getElementById('token').value.trim();
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  document.getElementById('token-form').classList.remove('wanted');
  showToken();
  route();
});
document.getElementById('token-clear').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showToken();
  route();
});
// Clicking the tab already shown reloads it.
document.getElementById('tabs').addEventListener('click', (event) => {
  if (event.target.closest('a')?.getAttribute('href') === location.hash) route();
});
window.addEventListener('hashchange', route);
showToken();
route();
api('/v1/node').then(thisNode, () => {});
