// Scenarios of the official E2B JS SDKs (`e2b`, `@e2b/code-interpreter`), unmodified, against agentboxd.
//
// Run by run.sh with NODE_PATH-free resolution: it runs this file from the node_modules directory it installed
// the pinned SDKs into (package.json next to it), with E2B_API_KEY, E2B_API_URL and E2B_SANDBOX_URL set.
// Prints one line per scenario; exits non-zero when any fails.

import { CommandExitError, NotFoundError, Sandbox } from 'e2b'
import { Sandbox as CodeSandbox } from '@e2b/code-interpreter'

const TAG = `js-run-${process.pid}`
const scenarios = []
const scenario = (name, fn) => scenarios.push([name, fn])

function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`)
}

async function expectRejects(cls, promise) {
  try {
    await promise
  } catch (e) {
    if (cls && !(e instanceof cls)) throw new Error(`expected ${cls.name}, got ${e?.constructor?.name}: ${e}`)
    return e
  }
  throw new Error(`expected ${cls ? cls.name : 'an error'}, nothing was thrown`)
}

const make = (opts = {}) =>
  Sandbox.create({ timeoutMs: 120_000, ...opts, metadata: { suite: TAG, ...(opts.metadata ?? {}) } })

scenario('create_with_metadata_and_envs', async () => {
  const sb = await make({ metadata: { owner: 'bob' }, envs: { FOO: 'js bar' } })
  try {
    assert((await sb.commands.run('echo -n $FOO')).stdout === 'js bar', 'envs')
    const info = await sb.getInfo()
    assert(info.metadata.owner === 'bob', 'metadata')
    assert(info.state === 'running', `state ${info.state}`)
    assert(await sb.isRunning(), 'running')
  } finally {
    await sb.kill()
  }
})

scenario('commands_foreground_streaming_exit_codes', async () => {
  const sb = await make()
  try {
    const r = await sb.commands.run('echo out; echo err >&2')
    assert(r.stdout === 'out\n' && r.stderr === 'err\n' && r.exitCode === 0, JSON.stringify(r))
    const e = await expectRejects(CommandExitError, sb.commands.run('echo partial; exit 3'))
    assert(e.exitCode === 3 && e.stdout === 'partial\n', `exit ${e.exitCode}`)
    const seen = []
    await sb.commands.run('for i in 1 2 3; do echo l$i; sleep 0.05; done', { onStdout: (d) => seen.push(d) })
    assert(seen.join('') === 'l1\nl2\nl3\n', JSON.stringify(seen))
    assert((await sb.commands.run('pwd', { cwd: '/tmp' })).stdout.trim() === '/tmp', 'cwd')
  } finally {
    await sb.kill()
  }
})

scenario('commands_background_list_kill', async () => {
  const sb = await make()
  try {
    const h = await sb.commands.run('sleep 60', { background: true })
    assert((await sb.commands.list()).some((p) => p.pid === h.pid), 'listed')
    assert((await sb.commands.kill(h.pid)) === true, 'kill')
    await expectRejects(CommandExitError, h.wait())
    assert((await sb.commands.kill(h.pid)) === false, 'second kill')
  } finally {
    await sb.kill()
  }
})

scenario('files', async () => {
  const sb = await make()
  try {
    const w = await sb.files.write('/home/user/a.txt', 'hello js')
    assert(w.path === '/home/user/a.txt', w.path)
    assert((await sb.files.read('/home/user/a.txt')) === 'hello js', 'read')
    assert((await sb.files.list('/home/user')).some((e) => e.name === 'a.txt'), 'list')
    assert(await sb.files.exists('/home/user/a.txt'), 'exists')
    assert(!(await sb.files.exists('/home/user/none')), 'not exists')
    assert((await sb.files.makeDir('/home/user/d')) === true, 'mkdir')
    assert((await sb.files.makeDir('/home/user/d')) === false, 'mkdir again')
    await sb.files.rename('/home/user/a.txt', '/home/user/d/b.txt')
    assert((await sb.files.read('/home/user/d/b.txt')) === 'hello js', 'renamed')
    await sb.files.remove('/home/user/d')
    assert(!(await sb.files.exists('/home/user/d')), 'removed')
    await expectRejects(NotFoundError, sb.files.read('/home/user/missing'))
  } finally {
    await sb.kill()
  }
})

scenario('watch_dir', async () => {
  const sb = await make()
  try {
    await sb.files.makeDir('/home/user/w')
    const events = []
    const handle = await sb.files.watchDir('/home/user/w', (e) => events.push(e), { recursive: true })
    await sb.files.write('/home/user/w/x.txt', 'y')
    await sb.commands.run('mkdir /home/user/w/sub && touch /home/user/w/sub/z')
    for (let i = 0; i < 40 && !events.some((e) => e.name === 'sub/z'); i++) await new Promise((r) => setTimeout(r, 50))
    await handle.stop()
    assert(events.some((e) => e.name === 'x.txt' && e.type === 'write'), JSON.stringify(events))
    assert(events.some((e) => e.name === 'sub' && e.type === 'create'), JSON.stringify(events))
    assert(events.some((e) => e.name === 'sub/z' && e.type === 'create'), JSON.stringify(events))
  } finally {
    await sb.kill()
  }
})

scenario('list_connect_timeout_metrics_kill', async () => {
  const sb = await make({ metadata: { js: 'list' } })
  const paginator = Sandbox.list({ query: { metadata: { suite: TAG, js: 'list' } } })
  const items = await paginator.nextItems()
  assert(items.length === 1 && items[0].sandboxId === sb.sandboxId, JSON.stringify(items))
  const again = await Sandbox.connect(sb.sandboxId)
  assert((await again.commands.run('echo -n hi')).stdout === 'hi', 'connect')
  const metrics = await sb.getMetrics()
  assert(metrics.length > 0 && metrics[0].memTotal > 0, 'metrics')
  await sb.setTimeout(2_000)
  await new Promise((r) => setTimeout(r, 4_000))
  assert(!(await sb.isRunning()), 'the timeout ended the sandbox')
  assert((await Sandbox.kill(sb.sandboxId)) === false, 'kill of a gone sandbox')
})

scenario('errors', async () => {
  const e = await expectRejects(null, Sandbox.create('no-such-template'))
  assert(String(e).includes('no-such-template'), String(e))
  await expectRejects(null, Sandbox.create({ apiKey: 'e2b_' + '0'.repeat(40) }))
})

scenario('code_interpreter', async () => {
  const sb = await CodeSandbox.create({ timeoutMs: 180_000, metadata: { suite: TAG } })
  try {
    let r = await sb.runCode('x = 20\nx + 1')
    assert(r.text === '21', r.text)
    assert((await sb.runCode('x * 2')).text === '40', 'state')
    r = await sb.runCode('1/0')
    assert(r.error && r.error.name === 'ZeroDivisionError', JSON.stringify(r.error))
    r = await sb.runCode('import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()')
    assert(r.results.some((x) => x.png), 'png')
    const ctx = await sb.createCodeContext({ language: 'js' })
    await sb.runCode('let k = 7', { context: ctx })
    assert((await sb.runCode('k * 6', { context: ctx })).text === '42', 'js context')
    assert((await sb.listCodeContexts()).some((c) => c.id === ctx.id), 'listed context')
    await sb.removeCodeContext(ctx)
  } finally {
    await sb.kill()
  }
})

let failed = 0
for (const [name, fn] of scenarios) {
  const t = performance.now()
  try {
    await fn()
    console.log(`PASS js ${name} (${((performance.now() - t) / 1000).toFixed(2)} s)`)
  } catch (e) {
    failed++
    console.log(`FAIL js ${name} (${((performance.now() - t) / 1000).toFixed(2)} s)`)
    console.log(e?.stack ?? String(e))
  }
}
const left = await Sandbox.list({ query: { metadata: { suite: TAG } } }).nextItems()
if (left.length) {
  failed++
  console.log(`FAIL js sandboxes left behind: ${left.map((s) => s.sandboxId)}`)
}
console.log(failed ? `${failed} failed` : 'all JS scenarios passed')
process.exit(failed ? 1 : 0)
