// The readable text (innerText) or the HTML of the page, of every element matching a selector, or of a ref.
(find, a) => {
  let els;
  if (a.selector) {
    try {
      els = Array.from(document.querySelectorAll(a.selector));
    } catch (e) {
      return { status: 'bad_selector', message: String(e && e.message) };
    }
    if (els.length === 0) return { status: 'missing' };
  } else if (a.ref) {
    const el = find(a).el;
    if (!el) return { status: 'missing' };
    els = [el];
  } else {
    els = [a.format === 'html' ? document.documentElement : document.body || document.documentElement];
  }
  const parts = els.map((el) => (a.format === 'html' ? el.outerHTML : el.innerText !== undefined ? el.innerText : el.textContent));
  return { status: 'ok', content: parts.join(a.format === 'html' ? '\n' : '\n\n'), matches: els.length };
}
