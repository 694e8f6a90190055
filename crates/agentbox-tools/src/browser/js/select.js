// Selects options of a <select> by value or visible label, firing input and change events.
(find, a) => {
  const el = find(a).el;
  if (!el) return { status: 'missing' };
  if (el.tagName !== 'SELECT') return { status: 'not_select', element: el.tagName.toLowerCase() };
  if (el.disabled) return { status: 'disabled' };
  const options = Array.from(el.options);
  const picked = [];
  for (const want of a.values) {
    const o = options.find((o) => o.value === want) || options.find((o) => o.label === want || o.text.trim() === want);
    if (!o) return { status: 'no_option', value: want, options: options.slice(0, 50).map((o) => o.label || o.text) };
    picked.push(o);
  }
  if (!el.multiple && picked.length > 1) return { status: 'not_multiple' };
  for (const o of options) o.selected = picked.includes(o);
  el.dispatchEvent(new Event('input', { bubbles: true }));
  el.dispatchEvent(new Event('change', { bubbles: true }));
  return { status: 'ok', selected: picked.map((o) => o.value) };
}
