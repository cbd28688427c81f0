// Connect interop (docs/api.md "Connect"): Buf's own Connect clients
// (@connectrpc/connect, @connectrpc/connect-node, @bufbuild/protobuf),
// with code generated at test time from the controller's
// proto/popcast_api.proto (Debian's protoc + protoc-gen-es), call every
// method of every service on a real controller, over both codecs
// (application/proto and application/json). Run by test_connect.c:
//
//   node connect.test.mjs API_URL TOKEN_FILE
//
// Exit 0 when every call answered as expected, 1 (with the reason) when
// not.
import {execFileSync} from 'child_process';
import fs from 'fs';
import path from 'path';
import {fileURLToPath} from 'url';
import {toJson} from '@bufbuild/protobuf';
import {StructSchema} from '@bufbuild/protobuf/wkt';
import {Code, ConnectError, createClient} from '@connectrpc/connect';
import {createConnectTransport} from '@connectrpc/connect-node';

const here = path.dirname(fileURLToPath(import.meta.url));
const [apiUrl, tokenFile] = process.argv.slice(2);
const token = fs.readFileSync(tokenFile, 'utf8').trim();

// The generated code: from the same .proto the controller is built from,
// by Debian's protoc (the well-known types from libprotobuf-dev) with
// protoc-gen-es.
fs.rmSync(path.join(here, 'gen'), {recursive: true, force: true});
fs.mkdirSync(path.join(here, 'gen'));
execFileSync('protoc', [`--plugin=protoc-gen-es=${path.join(here, 'node_modules/.bin/protoc-gen-es')}`,
  `--es_out=${path.join(here, 'gen')}`, '--es_opt=target=js', `-I${path.join(here, '../../proto')}`,
  '-I/usr/include', path.join(here, '../../proto/popcast_api.proto')], {cwd: here, stdio: 'inherit'});
const api = await import(path.join(here, 'gen/popcast_api_pb.js'));

class Failure extends Error {}
function check(ok, what) {
  if (!ok) throw new Failure(what);
}

function transport(binary, withToken = true) {
  return createConnectTransport({
    baseUrl: apiUrl,
    httpVersion: '1.1',
    useBinaryFormat: binary,
    interceptors: withToken ? [(next) => (req) => {
      req.header.set('Authorization', `Bearer ${token}`);
      return next(req);
    }] : [],
  });
}

// Calls fn; the answer, or the ConnectError's code when it is one of
// codes (another error fails the test).
async function call(what, fn, codes = []) {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof ConnectError && codes.includes(e.code)) return e.code;
    throw new Failure(`${what}: ${e instanceof ConnectError ? `${Code[e.code]}: ${e.rawMessage}` : e}`);
  }
}

const called = new Set();
async function run(binary) {
  const t = transport(binary);
  // Unary answers are google.protobuf.Struct messages: read as the JSON
  // document they hold (the REST answer).
  const c = (svc) => {
    const client = createClient(api[svc], t);
    return new Proxy(client, {get: (target, name) => (typeof target[name] !== 'function' ? target[name] :
      (...args) => {
        const r = target[name](...args);
        return r && typeof r.then === 'function' ?
          r.then((m) => (m && m.$typeName === 'google.protobuf.Struct' ? toJson(StructSchema, m) : m)) : r;
      })});
  };
  const codec = binary ? 'proto' : 'json';
  const tenant = `ci-${codec}`;
  const note = (svc, method) => called.add(`${svc}.${method}`);

  const health = await call('GetHealth', () => c('HealthService').getHealth({}));
  note('HealthService', 'getHealth');
  check(health.status === 'ok', `GetHealth: ${JSON.stringify(health)}`);

  const ts = c('TenantService');
  const source = (word) => new TextEncoder().encode(`return function(req) return '${word}' end\n`);
  const v1 = await call('DeployBundle', () => ts.deployBundle({tenant, bundle: source('one'), message: 'over connect'}));
  note('TenantService', 'deployBundle');
  check(v1.version >= 1 && v1.message === 'over connect', `DeployBundle: ${JSON.stringify(v1)}`);
  const v2 = await ts.deployBundle({tenant, bundle: source('two'), hold: true});
  check(v2.version === v1.version + 1, `DeployBundle hold: ${JSON.stringify(v2)}`);
  const list = await call('ListTenants', () => ts.listTenants({}));
  note('TenantService', 'listTenants');
  check(list.tenants.some((x) => x.tenant === tenant), 'ListTenants misses the tenant');
  const one = await call('GetTenant', () => ts.getTenant({tenant}));
  note('TenantService', 'getTenant');
  check(one.last_version === v2.version, `GetTenant: ${JSON.stringify(one)}`);
  const versions = await call('ListVersions', () => ts.listVersions({tenant}));
  note('TenantService', 'listVersions');
  check(versions.versions.length >= 2, 'ListVersions');
  const rollout = await call('GetVersionRollout', () => ts.getVersionRollout({tenant, version: BigInt(v1.version), wait: 0n}));
  note('TenantService', 'getVersionRollout');
  check(rollout.tenant === tenant && rollout.version === v1.version, `GetVersionRollout: ${JSON.stringify(rollout)}`);
  const h = await call('GetVersionHealth', () => ts.getVersionHealth({tenant, version: BigInt(v2.version), baseline: BigInt(v1.version), minRequests: 5n}));
  note('TenantService', 'getVersionHealth');
  check(h.tenant === tenant, 'GetVersionHealth');
  const staged = await call('StageVersion', () => ts.stageVersion({tenant, version: BigInt(v2.version), body: {everyone: true}}));
  note('TenantService', 'stageVersion');
  check(staged.kind === 'stage', `StageVersion: ${JSON.stringify(staged)}`);
  await call('GetTenantPlan', () => ts.getTenantPlan({tenant}));
  note('TenantService', 'getTenantPlan');
  const plan = await call('SetTenantPlan', () => ts.setTenantPlan({tenant, body: {plan: [{everyone: true, gate: false, bake_ms: 0}]}}));
  note('TenantService', 'setTenantPlan');
  check(plan.tenant === tenant, `SetTenantPlan: ${JSON.stringify(plan)}`);
  await call('ClearTenantPlan', () => ts.clearTenantPlan({tenant}));
  note('TenantService', 'clearTenantPlan');
  // Rollback: with no agent nothing was proven live: refused, by the REST rule.
  await call('Rollback', () => ts.rollback({tenant, body: {version: v1.version}}), [Code.FailedPrecondition, Code.NotFound]);
  note('TenantService', 'rollback');

  const ds = c('DeploymentService');
  const started = await call('StartDeployment', () => ds.startDeployment({tenant, body: {plan: [{everyone: true, gate: false, bake_ms: 0}]}}));
  note('DeploymentService', 'startDeployment');
  const id = BigInt(started.id);
  const deps = await call('ListDeployments', () => ds.listDeployments({tenant}));
  note('DeploymentService', 'listDeployments');
  check(deps.deployments.length >= 1, 'ListDeployments');
  const dep = await call('GetDeployment', () => ds.getDeployment({tenant, id}));
  note('DeploymentService', 'getDeployment');
  check(dep.id === started.id, 'GetDeployment');
  // Its state decides which of these apply; each is answered by the REST rule.
  for (const m of ['pauseDeployment', 'resumeDeployment', 'promoteDeployment', 'abortDeployment']) {
    await call(m, () => ds[m]({tenant, id}), [Code.FailedPrecondition, Code.AlreadyExists, Code.InvalidArgument]);
    note('DeploymentService', m);
  }

  const batch = await call('DeployBatch', () => c('ChangeService').deployBatch({body: {changes: [{tenant: `${tenant}-b`, source: "return function(req) return 'b' end"}]}}));
  note('ChangeService', 'deployBatch');
  check(batch.committed === 1, `DeployBatch: ${JSON.stringify(batch)}`);

  const fs_ = c('FleetService');
  const fleet = await call('GetFleet', () => fs_.getFleet({}));
  note('FleetService', 'getFleet');
  check(Array.isArray(fleet.agents), 'GetFleet');
  const bySeq = await call('GetRolloutBySeq', () => fs_.getRolloutBySeq({seq: BigInt(v1.seq), wait: 0n}));
  note('FleetService', 'getRolloutBySeq');
  check(bySeq.tenant === tenant, 'GetRolloutBySeq');

  const cs = c('ClusterService');
  const cluster = await call('GetCluster', () => cs.getCluster({}));
  note('ClusterService', 'getCluster');
  check(cluster.role === 'leader', `GetCluster: ${JSON.stringify(cluster)}`);
  await call('AddNode', () => cs.addNode({body: {id: 2}}), [Code.InvalidArgument, Code.FailedPrecondition, Code.Unavailable]);
  note('ClusterService', 'addNode');
  await call('RemoveNode', () => cs.removeNode({id: 99n}), [Code.NotFound, Code.InvalidArgument, Code.FailedPrecondition, Code.Unavailable]);
  note('ClusterService', 'removeNode');

  const tks = c('TokenService');
  const made = await call('CreateToken', () => tks.createToken({body: {tenants: [tenant], name: `ci-${codec}`}}));
  note('TokenService', 'createToken');
  check(typeof made.token === 'string', 'CreateToken');
  const tokens = await call('ListTokens', () => tks.listTokens({}));
  note('TokenService', 'listTokens');
  check(tokens.tokens.some((x) => x.id === made.id), 'ListTokens');
  const revoked = await call('RevokeToken', () => tks.revokeToken({id: made.id}));
  note('TokenService', 'revokeToken');
  check(revoked !== undefined, 'RevokeToken');

  const as = c('AgentService');
  await call('ListAgents', () => as.listAgents({}));
  note('AgentService', 'listAgents');
  await call('EnrollAgent', () => as.enrollAgent({body: {agent_id: 'edge-x', public_key: 'not a key'}}), [Code.InvalidArgument]);
  note('AgentService', 'enrollAgent');
  await call('RevokeAgent', () => as.revokeAgent({agentId: 'nobody'}), [Code.NotFound]);
  note('AgentService', 'revokeAgent');

  const ks = c('KeyService');
  const keys = await call('ListKeys', () => ks.listKeys({}));
  note('KeyService', 'listKeys');
  check(keys.current !== undefined || keys.keys !== undefined || Object.keys(keys).length > 0, 'ListKeys');
  await call('RotateKey', () => ks.rotateKey({body: {next_public_key: 'not a key'}}), [Code.InvalidArgument]);
  note('KeyService', 'rotateKey');

  // A tenant to delete, then DeleteTenant.
  await ts.deployBundle({tenant: `${tenant}-d`, bundle: source('gone')});
  await call('DeleteTenant', () => ts.deleteTenant({tenant: `${tenant}-d`, message: 'done'}));
  note('TenantService', 'deleteTenant');

  // Errors: Connect codes from the REST errors.
  check(await call('GetTenant missing', () => ts.getTenant({tenant: 'no-such-tenant'}), [Code.NotFound]) === Code.NotFound, 'not_found');
  const anon = createClient(api.TenantService, transport(binary, false));
  check(await call('no token', () => anon.listTenants({}), [Code.Unauthenticated]) === Code.Unauthenticated, 'unauthenticated');
  check(await call('bad name', () => ts.getTenant({tenant: 'Bad Name'}), [Code.InvalidArgument]) === Code.InvalidArgument, 'invalid_argument');

  // The streams: Watch from seq 0 gives every entry in order, as
  // WatchEvents; a tail starts (and is ended by us); a tail of a tenant
  // the token may not use ends with not_found.
  const ws = createClient(api.WatchService, t);
  const seen = [];
  for await (const ev of ws.watch({from: 0n})) {
    seen.push(ev);
    if (seen.length === 3) break;
  }
  note('WatchService', 'watch');
  check(seen.every((ev, i) => ev.type === 'entry' && ev.id === BigInt(i + 1)),
    `Watch: ${seen.map((ev) => `${ev.id}:${ev.type}`).join(' ')}`);
  check(seen[0].data.seq === 1, 'Watch: the data of entry 1');
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), 500);
  const tailEnd = await call('Tail', async () => {
    for await (const ev of ws.tail({tenant}, {signal: ac.signal})) return ev;
    return null;
  }, [Code.Canceled]);
  clearTimeout(timer);
  check(tailEnd === Code.Canceled, `Tail: ${tailEnd}`);
  note('WatchService', 'tail');
  const scoped = createClient(api.WatchService, createConnectTransport({
    baseUrl: apiUrl, httpVersion: '1.1', useBinaryFormat: binary,
    interceptors: [(next) => (req) => { req.header.set('Authorization', `Bearer ${made.token}`); return next(req); }],
  }));
  check(await call('Tail refused', async () => {
    for await (const ev of scoped.tail({tenant})) return ev;
    return null;
  }, [Code.NotFound, Code.Unauthenticated]) !== null, 'a revoked token tailed');
}

let status = 0;
try {
  await run(true);
  await run(false);
  // Every method of every service in the generated code was called.
  const all = [];
  for (const [name, v] of Object.entries(api)) {
    if (v && v.typeName && v.methods) for (const m of v.methods) all.push(`${name}.${m.localName}`);
  }
  const missed = all.filter((m) => !called.has(m));
  check(missed.length === 0, `not called: ${missed.join(', ')}`);
  console.log(`connect interop: ${all.length} methods of ${new Set(all.map((m) => m.split('.')[0])).size} ` +
    'services called over application/proto and application/json');
} catch (e) {
  console.error(`connect interop: ${e instanceof Failure ? e.message : e.stack || e}`);
  status = 1;
}
process.exit(status);
