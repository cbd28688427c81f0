// popcast dashboard (docs/dashboard.md): a read-only view of the fleet,
// built from the controller's REST views and kept live by its event
// stream (GET /v1/watch). The token stays in this tab's session storage
// and travels only in the Authorization header of same-origin requests.
// Every value shown comes from the API as text (textContent), never as
// markup: tenant names and messages cannot inject anything.
'use strict';

const TOKEN_KEY = 'popcast.token';
const TENANTS_SHOWN = 200;   // tenants whose details are read
const EVENTS_KEPT = 100;     // lines in the events list
const REFRESH_DELAY_MS = 150; // events in a burst cause one refresh

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  fleet: null, tenants: [], details: new Map(), deployments: new Map(), cluster: null,
  lastId: null, stream: null, refreshTimer: null, refreshing: false, again: false,
};

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement('tr');
  for (const c of cells) tr.appendChild(c instanceof Node ? c : el('td', c));
  return tr;
}

function showError(text) {
  $('error').textContent = text;
  $('error').hidden = !text;
}

async function api(path) {
  const res = await fetch(path, {headers: {Authorization: `Bearer ${state.token}`}});
  if (res.status === 401) throw new Error('the controller refused the token (401)');
  if (res.status === 403) throw new Error(`${path}: this token may not read it (403)`);
  if (!res.ok) throw new Error(`${path}: ${res.status}`);
  return res.json();
}

// What the agents' reports say a tenant is served at.
function servingText(d) {
  const s = d && d.serving;
  if (!s) return {text: '', live: 0, agents: 0};
  const parts = (s.versions || []).map((v) => `v${v.version} on ${v.agents}`);
  if (s.none) parts.push(`none on ${s.none}`);
  const active = (s.versions || []).find((v) => v.version === d.active_version);
  return {text: `${parts.join(', ') || 'nowhere'} of ${s.agents}`, live: active ? active.agents : 0,
          agents: s.agents};
}

function renderTenants() {
  const body = $('tenants').tBodies[0];
  body.replaceChildren();
  for (const t of state.tenants) {
    const d = state.details.get(t.tenant);
    const s = servingText(d);
    const everywhere = s.agents > 0 && s.live === s.agents;
    const serving = el('td', s.text, everywhere ? 'ok' : 'warn');
    const dep = state.deployments.get(t.tenant);
    const depText = dep ? `#${dep.id} v${dep.version} ${dep.state}` +
      (dep.state === 'running' || dep.state === 'paused' ? ` (stage ${dep.stage} of ${dep.stages_total})` : '') : '';
    const tr = row([t.tenant, t.deleted ? 'deleted' : `v${t.active_version}`, serving, depText]);
    tr.dataset.tenant = t.tenant;
    tr.dataset.active = t.active_version;
    tr.dataset.live = `${s.live}/${s.agents}`;
    body.appendChild(tr);
  }
}

function agentState(a) {
  if (a.gone) return ['gone', 'bad'];
  if (a.stale) return ['stale', 'warn'];
  return ['ok', 'ok'];
}

function renderAgents() {
  const body = $('agents').tBodies[0];
  body.replaceChildren();
  for (const a of (state.fleet && state.fleet.agents) || []) {
    const [word, cls] = agentState(a);
    const tr = row([a.agent_id, a.pop, el('td', word, cls), a.applied_seq,
      el('td', a.lag, a.lag > 0 ? 'warn' : ''), `${(a.last_seen_ms_ago / 1000).toFixed(1)} s ago`,
      a.tenants, (a.quarantined || []).length]);
    tr.dataset.agent = a.agent_id;
    tr.dataset.state = word;
    body.appendChild(tr);
  }
}

function renderMap() {
  const g = $('pops');
  g.replaceChildren();
  const fleet = state.fleet || {agents: [], pops: []};
  const byPop = new Map();
  for (const a of fleet.agents || []) {
    const p = byPop.get(a.pop) || {agents: 0, ok: 0, gone: 0};
    const [word] = agentState(a);
    p.agents++;
    if (word === 'ok') p.ok++;
    if (word === 'gone') p.gone++;
    byPop.set(a.pop, p);
  }
  const placed = new Set();
  const ns = 'http://www.w3.org/2000/svg';
  for (const loc of fleet.pops || []) {
    const p = byPop.get(loc.pop) || {agents: 0, ok: 0, gone: 0};
    placed.add(loc.pop);
    const x = loc.lon + 180, y = 90 - loc.lat;
    const c = document.createElementNS(ns, 'circle');
    c.setAttribute('cx', x);
    c.setAttribute('cy', y);
    c.setAttribute('r', 2 + Math.min(4, Math.sqrt(p.agents)));
    c.setAttribute('class', p.agents && p.ok === p.agents ? 'ok' : p.gone === p.agents ? 'bad' : 'warn');
    c.dataset.pop = loc.pop;
    const title = document.createElementNS(ns, 'title');
    title.textContent = `${loc.pop}: ${p.ok} of ${p.agents} agents ok`;
    c.appendChild(title);
    const label = document.createElementNS(ns, 'text');
    label.setAttribute('x', x + 4);
    label.setAttribute('y', y + 1.5);
    label.textContent = `${loc.pop} ${p.ok}/${p.agents}`;
    g.append(c, label);
  }
  const unplaced = [...byPop.keys()].filter((p) => !placed.has(p)).sort();
  $('unplaced').hidden = unplaced.length === 0;
  $('unplaced').textContent = unplaced.length ?
    `PoPs with no location (pop_locations): ${unplaced.join(', ')}` : '';
}

function renderCluster() {
  const c = state.cluster;
  const body = $('cluster').tBodies[0];
  body.replaceChildren();
  if (!c) return;
  $('cluster-summary').textContent =
    `this controller: node ${c.id}, ${c.role}; leader ${c.leader_id || 'unknown'}; term ${c.term}; ` +
    `commit index ${c.commit_index}, applied ${c.last_applied}`;
  for (const n of c.nodes || []) {
    const role = n.leader ? 'leader' : n.role;
    const tr = row([n.id, n.raft_address, n.api_url, el('td', role, n.leader ? 'ok' : '')]);
    tr.dataset.node = n.id;
    body.appendChild(tr);
  }
}

function render() {
  renderMap();
  renderTenants();
  renderAgents();
  renderCluster();
}

// Reads every view again; events in a burst share one read.
async function refresh() {
  if (state.refreshing) {
    state.again = true;
    return;
  }
  state.refreshing = true;
  try {
    const [fleet, tenants, cluster] = await Promise.all([
      api('/v1/fleet').catch(() => null), api('/v1/tenants'), api('/v1/cluster').catch(() => null)]);
    state.fleet = fleet;
    state.cluster = cluster;
    state.tenants = (tenants.tenants || []).slice(0, TENANTS_SHOWN);
    await Promise.all(state.tenants.map(async (t) => {
      const enc = encodeURIComponent(t.tenant);
      const [d, deps] = await Promise.all([api(`/v1/tenants/${enc}`).catch(() => null),
        api(`/v1/tenants/${enc}/deployments`).catch(() => null)]);
      if (d) state.details.set(t.tenant, d);
      const list = (deps && deps.deployments) || [];
      if (list.length) state.deployments.set(t.tenant, list.reduce((a, b) => (b.id > a.id ? b : a)));
    }));
    showError('');
    render();
  } catch (e) {
    showError(String(e.message || e));
  } finally {
    state.refreshing = false;
    if (state.again) {
      state.again = false;
      scheduleRefresh();
    }
  }
}

function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(refresh, REFRESH_DELAY_MS);
}

function describe(type, d) {
  switch (type) {
    case 'entry': return `seq ${d.seq} ${d.kind} ${d.tenant} v${d.version} by ${d.author || '?'}`;
    case 'rollout': return `${d.agent_id} (${d.pop}) ${d.tenant}: live v${d.live_version}, applied v${d.applied_version}`;
    case 'deployment': return `deployment #${d.id} of ${d.tenant} v${d.version}: ${d.state}, stage ${d.stage} of ${d.stages_total}`;
    case 'fleet': return `agent ${d.agent_id} (${d.pop}): ${d.state}`;
    case 'cluster': return `leader is node ${d.leader} (term ${d.term})`;
    default: return `${type}: ${d.message || d.reason || ''}`;
  }
}

function addEvent(type, d) {
  const list = $('events');
  const item = el('li', `${new Date().toLocaleTimeString()}  ${describe(type, d)}`);
  item.dataset.type = type;
  list.prepend(item);
  while (list.children.length > EVENTS_KEPT) list.lastChild.remove();
}

function setStream(on, text) {
  $('stream').textContent = text;
  $('stream').className = `badge ${on ? 'on' : 'off'}`;
}

// Server-Sent Events over fetch (an EventSource cannot send the token in
// a header): reads the stream, dispatches each event, reconnects from the
// last id it got.
async function follow() {
  const ctl = new AbortController();
  state.stream = ctl;
  const headers = {Authorization: `Bearer ${state.token}`};
  if (state.lastId !== null) headers['Last-Event-ID'] = state.lastId;
  try {
    const res = await fetch('/v1/watch', {headers, signal: ctl.signal});
    if (res.status === 410) { // compacted: read everything again, watch from now
      state.lastId = null;
      scheduleRefresh();
      throw new Error('the log moved on; reading again');
    }
    if (!res.ok) throw new Error(`watch: ${res.status}`);
    setStream(true, 'live');
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = '', ev = {type: 'message', id: null, data: []};
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += decoder.decode(value, {stream: true});
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).replace(/\r$/, '');
        buf = buf.slice(nl + 1);
        if (line === '') {
          if (ev.data.length) dispatch(ev);
          ev = {type: 'message', id: null, data: []};
        } else if (!line.startsWith(':')) {
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'event') ev.type = val;
          else if (field === 'id') ev.id = val;
          else if (field === 'data') ev.data.push(val);
        }
      }
    }
    throw new Error('the controller ended the stream');
  } catch (e) {
    if (ctl.signal.aborted) return;
    setStream(false, `reconnecting (${e.message || e})`);
    setTimeout(follow, 1000);
  }
}

function dispatch(ev) {
  let d;
  try {
    d = JSON.parse(ev.data.join('\n'));
  } catch {
    return;
  }
  if (ev.id !== null && ev.type === 'entry') state.lastId = ev.id;
  if (ev.type === 'cut' || ev.type === 'compacted') {
    state.lastId = ev.type === 'compacted' ? null : state.lastId;
  }
  addEvent(ev.type, d);
  scheduleRefresh();
}

function start() {
  $('login').hidden = true;
  $('forget').hidden = false;
  $('main').hidden = false;
  refresh();
  follow();
}

$('login').addEventListener('submit', (e) => {
  e.preventDefault();
  state.token = $('token').value.trim();
  $('token').value = '';
  if (!state.token) return;
  sessionStorage.setItem(TOKEN_KEY, state.token);
  start();
});

$('forget').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.stream) state.stream.abort();
  location.reload();
});

// Agents' "last report" ages move without events.
setInterval(() => { if (state.token && !$('main').hidden) scheduleRefresh(); }, 5000);

if (state.token) start();
