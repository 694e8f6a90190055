// The current value of a form field, or the text of another element (passwords masked).
(find, a) => {
  const el = find(a).el;
  if (!el) return null;
  if (el.tagName === 'INPUT' || el.tagName === 'TEXTAREA' || el.tagName === 'SELECT') {
    return el.type === 'password' ? '\u2022'.repeat(Math.min(el.value.length, 8)) : el.value;
  }
  return el.innerText;
}
