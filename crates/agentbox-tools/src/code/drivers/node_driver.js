// agentbox javascript context driver: one long-lived Node.js process whose globals persist across requests.
// Same file protocol as the python driver (see python_driver.py).
'use strict';
const fs = require('fs');
const path = require('path');
const vm = require('vm');
const util = require('util');
const nodeModule = require('module');

const DIR = process.argv[2];
const HOME = process.env.HOME || process.cwd();
globalThis.require = nodeModule.createRequire(path.join(HOME, '__agentbox_context__.js'));
globalThis.module = { exports: {} };
globalThis.exports = globalThis.module.exports;
globalThis.__dirname = HOME;

const state = { cell: 0, display: [], out: null, err: null };
const realOut = process.stdout.write.bind(process.stdout);
const realErr = process.stderr.write.bind(process.stderr);
function writer(which, real) {
  return function (chunk, encoding, cb) {
    const fd = state[which];
    if (fd === null) return real(chunk, encoding, cb);
    try {
      fs.writeSync(fd, typeof chunk === 'string' ? chunk : Buffer.from(chunk));
    } catch (_) { /* output file gone */ }
    if (typeof encoding === 'function') encoding();
    else if (typeof cb === 'function') cb();
    return true;
  };
}
process.stdout.write = writer('out', realOut);
process.stderr.write = writer('err', realErr);
process.on('SIGINT', () => {});
process.on('uncaughtException', (e) => { process.stderr.write(`Uncaught ${e && e.stack ? e.stack : e}\n`); });
process.on('unhandledRejection', (e) => { process.stderr.write(`Unhandled rejection: ${e && e.stack ? e.stack : e}\n`); });

const PNG = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
function rich(value, main) {
  const out = {};
  if (value instanceof Uint8Array && Buffer.from(value.buffer, value.byteOffset, Math.min(8, value.length)).equals(PNG)) {
    out.png = Buffer.from(value.buffer, value.byteOffset, value.length).toString('base64');
  } else if (value && typeof value === 'object' && typeof value.html === 'string' && Object.keys(value).length === 1) {
    out.html = value.html;
  }
  out.text = typeof value === 'string' ? util.inspect(value) : util.inspect(value, { depth: 4, maxArrayLength: 100, breakLength: 120 });
  if (main) out.is_main_result = true;
  return out;
}
globalThis.display = (...values) => { for (const v of values) state.display.push(rich(v, false)); };

function readCapped(file, cap) {
  const size = fs.statSync(file).size;
  if (size <= cap) {
    const text = fs.readFileSync(file, 'utf8');
    fs.unlinkSync(file);
    return [text, null, size];
  }
  const fd = fs.openSync(file, 'r');
  const head = Buffer.alloc(cap - Math.floor(cap / 2));
  const tail = Buffer.alloc(Math.floor(cap / 2));
  fs.readSync(fd, head, 0, head.length, 0);
  fs.readSync(fd, tail, 0, tail.length, size - tail.length);
  fs.closeSync(fd);
  const cut = size - head.length - tail.length;
  return [`${head.toString('utf8')}\n[... ${cut} bytes truncated; full output saved to ${file} ...]\n${tail.toString('utf8')}`, file, size];
}

function errorOf(e) {
  if (e instanceof Error || (e && typeof e === 'object' && 'stack' in e)) {
    return { name: e.name || 'Error', value: e.message === undefined ? String(e) : String(e.message), traceback: String(e.stack || e) };
  }
  return { name: 'Error', value: util.inspect(e), traceback: `Uncaught ${util.inspect(e)}` };
}

function compile(code, filename) {
  try {
    return { script: new vm.Script(code, { filename }), wrapped: false };
  } catch (e) {
    if (e instanceof SyntaxError && /await is only valid|Unexpected reserved word/.test(e.message) && /\bawait\b/.test(code)) {
      return { script: new vm.Script(`(async () => {\n${code}\n})()`, { filename, lineOffset: -1 }), wrapped: true };
    }
    throw e;
  }
}

async function handle(rid) {
  const reqPath = path.join(DIR, `req-${rid}.json`);
  let req;
  try {
    req = JSON.parse(fs.readFileSync(reqPath, 'utf8'));
    fs.unlinkSync(reqPath);
  } catch (e) {
    finish(rid, { results: [], error: { name: 'ProtocolError', value: `cannot read request: ${e.message}`, traceback: '' } });
    return;
  }
  const cap = req.cap || 16384;
  const timeoutMs = req.timeout ? Math.max(1, Math.round(req.timeout * 1000)) : undefined;
  state.cell += 1;
  const filename = `<cell-${state.cell}>`;
  const outPath = path.join(DIR, `out-${rid}.txt`);
  const errPath = path.join(DIR, `err-${rid}.txt`);
  state.out = fs.openSync(outPath, 'w', 0o600);
  state.err = fs.openSync(errPath, 'w', 0o600);
  state.display = [];
  const resp = { results: [], error: null, timed_out: false };
  const started = Date.now();
  let value;
  try {
    const { script } = compile(req.code, filename);
    value = script.runInThisContext({ timeout: timeoutMs, breakOnSigint: true, displayErrors: false });
    if (value && typeof value.then === 'function') {
      let timer;
      const limit = new Promise((_, reject) => {
        if (timeoutMs) timer = setTimeout(() => reject(Object.assign(new Error('Script execution timed out.'), { code: 'ERR_SCRIPT_EXECUTION_TIMEOUT' })), timeoutMs);
      });
      try {
        value = await Promise.race([value, limit]);
      } finally {
        clearTimeout(timer);
      }
    }
  } catch (e) {
    if (e && e.code === 'ERR_SCRIPT_EXECUTION_TIMEOUT') resp.timed_out = true;
    resp.error = errorOf(e);
  }
  fs.closeSync(state.out);
  fs.closeSync(state.err);
  state.out = null;
  state.err = null;
  resp.duration_ms = Date.now() - started;
  resp.results = state.display.slice();
  if (!resp.error && value !== undefined) resp.results.push(rich(value, true));
  [resp.stdout, resp.stdout_file, resp.stdout_bytes] = readCapped(outPath, cap);
  [resp.stderr, resp.stderr_file, resp.stderr_bytes] = readCapped(errPath, cap);
  try {
    capResponse(rid, resp, req);
  } catch (e) { // never answer uncapped
    resp.results = [{ text: `<results could not be sized: ${e && e.message}>`, truncated: true }];
  }
  finish(rid, resp);
}

// The response is capped here, inside the sandbox, as in the python driver: each format of each result
// at most req.result_cap bytes, the whole response at most req.response_cap, at most req.max_results
// results; what is left out is saved to result-ID-N.EXT files named in the result's "files".
const TEXT_FORMATS = ['text', 'html'];
const EXTENSIONS = { text: 'txt', html: 'html', png: 'png' };

function encoded(key, data) {
  return key === 'png' ? Buffer.from(String(data), 'base64') : Buffer.from(String(data), 'utf8');
}

function spill(rid, n, key, blob) {
  const file = path.join(DIR, `result-${rid}-${n}.${EXTENSIONS[key] || 'bin'}`);
  fs.writeFileSync(file, blob);
  return file;
}

function headText(blob, keep) {
  return blob.subarray(0, keep).toString('utf8').replace(/\uFFFD+$/, '');
}

function capResult(rid, n, res, cap) {
  for (const key of Object.keys(res).filter((k) => k in EXTENSIONS)) {
    const size = Buffer.byteLength(String(res[key]), 'utf8');
    if (size <= cap) continue;
    const blob = encoded(key, res[key]);
    const file = spill(rid, n, key, blob);
    res.files = Object.assign(res.files || {}, { [key]: file });
    res.truncated = true;
    if (TEXT_FORMATS.includes(key)) {
      const kept = headText(blob, Math.max(0, cap - 200));
      res[key] = `${kept}\n[... ${blob.length - Buffer.byteLength(kept, 'utf8')} bytes truncated; full result saved to ${file} ...]`;
    } else {
      delete res[key];
    }
  }
  return res;
}

function leaveOut(rid, n, res) {
  for (const key of Object.keys(res).filter((k) => k in EXTENSIONS)) {
    const file = spill(rid, n, key, encoded(key, res[key]));
    res.files = Object.assign(res.files || {}, { [key]: file });
    delete res[key];
  }
  res.truncated = true;
  res.text = `[... result left out: the response is over its size limit; saved to ${Object.values(res.files).sort().join(', ')} ...]`;
  return res;
}

function capResponse(rid, resp, req) {
  const resultCap = req.result_cap || 1048576;
  const responseCap = req.response_cap || 4194304;
  const maxResults = req.max_results || 100;
  let results = resp.results;
  if (results.length > maxResults) {
    const dropped = results.length - maxResults + 1;
    results = results.slice(0, maxResults - 1);
    results.push({ text: `[... ${dropped} more results left out ...]`, truncated: true });
  }
  results = results.map((r, n) => capResult(rid, n, r, resultCap));
  if (resp.error) {
    for (const key of ['value', 'traceback']) {
      const blob = Buffer.from(String(resp.error[key] || ''), 'utf8');
      if (blob.length > resultCap) {
        const kept = headText(blob, Math.max(0, resultCap - 100));
        resp.error[key] = `${kept}\n[... ${blob.length - Buffer.byteLength(kept, 'utf8')} bytes truncated ...]`;
      }
    }
  }
  resp.results = [];
  let budget = responseCap - Buffer.byteLength(JSON.stringify(resp), 'utf8') - 1024;
  results.forEach((r, n) => {
    let size = Buffer.byteLength(JSON.stringify(r), 'utf8') + 2;
    if (size > budget) {
      r = leaveOut(rid, n, r);
      size = Buffer.byteLength(JSON.stringify(r), 'utf8') + 2;
    }
    budget -= size;
    resp.results.push(r);
  });
  return resp;
}

function finish(rid, resp) {
  const final = path.join(DIR, `resp-${rid}.json`);
  fs.writeFileSync(`${final}.tmp`, JSON.stringify(resp));
  fs.renameSync(`${final}.tmp`, final);
  try {
    const fd = fs.openSync(path.join(DIR, `resp-${rid}.fifo`), fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    fs.writeSync(fd, 'done\n');
    fs.closeSync(fd);
  } catch (_) { /* the client gave up; the response file stays */ }
}

const fifo = path.join(DIR, 'requests');
const fd = fs.openSync(fifo, fs.constants.O_RDWR);
fs.writeFileSync(path.join(DIR, 'pid.tmp'), String(process.pid));
fs.renameSync(path.join(DIR, 'pid.tmp'), path.join(DIR, 'pid'));
let buf = '';
let queue = Promise.resolve();
const stream = fs.createReadStream(null, { fd, encoding: 'utf8', autoClose: false });
stream.on('data', (chunk) => {
  buf += chunk;
  let nl;
  while ((nl = buf.indexOf('\n')) >= 0) {
    const rid = buf.slice(0, nl).trim();
    buf = buf.slice(nl + 1);
    if (/^[A-Za-z0-9-]+$/.test(rid)) queue = queue.then(() => handle(rid));
  }
});
