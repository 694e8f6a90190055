// Called on the value an expression produced: calls it if it is a function, awaits promises,
// and returns { type, json } where json is JSON text of the value (DOM nodes described,
// cycles marked, Map and Set converted, non-finite numbers and bigints as strings).
async function () {
  let v = this;
  if (typeof v === 'function') v = await v();
  else if (v && typeof v.then === 'function') v = await v;
  if (v === undefined) return { type: 'undefined', json: 'null' };
  const seen = new WeakSet();
  const describe = (n) => {
    let s = '<' + n.tagName.toLowerCase();
    if (n.id) s += ' id="' + n.id + '"';
    const c = (n.getAttribute('class') || '').trim();
    if (c) s += ' class="' + c.slice(0, 60) + '"';
    return s + '>';
  };
  const replacer = function (key, x) {
    if (typeof x === 'bigint') return x.toString();
    if (typeof x === 'function') return '[function ' + (x.name || 'anonymous') + ']';
    if (typeof x === 'symbol') return x.toString();
    if (typeof x === 'number' && !Number.isFinite(x)) return String(x);
    if (x && typeof x === 'object') {
      if (typeof Node !== 'undefined' && x instanceof Node) return x.nodeType === 1 ? describe(x) : x.nodeName;
      if (typeof Window !== 'undefined' && x instanceof Window) return '[Window]';
      if (seen.has(x)) return '[Circular]';
      seen.add(x);
      if (x instanceof Error) return { name: x.name, message: x.message, stack: x.stack };
      if (x instanceof Map) return Object.fromEntries(x);
      if (x instanceof Set || (typeof NodeList !== 'undefined' && x instanceof NodeList) ||
          (typeof HTMLCollection !== 'undefined' && x instanceof HTMLCollection)) return Array.from(x);
    }
    return x;
  };
  const type = v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v;
  const json = JSON.stringify(v, replacer);
  return { type, json: json === undefined ? 'null' : json };
}
