// Focuses an editable element before typing: selects its content when it is to be replaced,
// or puts the caret at its end.
(find, a) => {
  const el = find(a).el;
  if (!el) return { status: 'missing' };
  el.focus();
  const isField = el.tagName === 'INPUT' || el.tagName === 'TEXTAREA';
  if (a.clear) {
    if (isField) {
      el.select();
    } else {
      const r = document.createRange();
      r.selectNodeContents(el);
      const s = getSelection();
      s.removeAllRanges();
      s.addRange(r);
    }
  } else if (isField) {
    try {
      const n = el.value.length;
      el.setSelectionRange(n, n);
    } catch (e) {
      // Some input types (email, number) have no selection API; the caret stays where it is.
    }
  } else {
    const r = document.createRange();
    r.selectNodeContents(el);
    r.collapse(false);
    const s = getSelection();
    s.removeAllRanges();
    s.addRange(r);
  }
  return { status: 'ok', focused: document.activeElement === el || el.contains(document.activeElement) };
}
