// Scrolls the target into view and says whether it can be acted on: visible, enabled,
// editable when asked, and not covered by another element at the point that would be clicked.
(find, a) => {
  let f;
  try {
    f = find(a);
  } catch (e) {
    return { status: 'bad_selector', message: String(e && e.message) };
  }
  const el = f.el;
  if (!el) return { status: 'missing' };
  const describe = (n) => {
    let s = '<' + n.tagName.toLowerCase();
    if (n.id) s += ' id="' + n.id + '"';
    const c = (n.getAttribute('class') || '').trim();
    if (c) s += ' class="' + c.slice(0, 60) + '"';
    return s + '>';
  };
  const element = describe(el);
  el.scrollIntoView({ block: 'center', inline: 'center', behavior: 'instant' });
  const visible = typeof el.checkVisibility === 'function' ? el.checkVisibility({ visibilityProperty: true }) : true;
  const rects = Array.from(el.getClientRects()).filter((r) => r.width > 0 && r.height > 0);
  if (!visible || rects.length === 0) return { status: 'hidden', element };
  if (el.disabled || el.getAttribute('aria-disabled') === 'true') return { status: 'disabled', element };
  if (a.editable) {
    const tag = el.tagName;
    const t = (el.getAttribute('type') || 'text').toLowerCase();
    const textual = tag === 'TEXTAREA' || el.isContentEditable ||
      (tag === 'INPUT' && !['checkbox', 'radio', 'button', 'submit', 'reset', 'image', 'file', 'hidden', 'range', 'color'].includes(t));
    if (!textual) return { status: 'not_editable', element };
    if (el.readOnly) return { status: 'readonly', element };
  }
  const inView = rects.find((r) => r.bottom > 0 && r.right > 0 && r.top < innerHeight && r.left < innerWidth) || rects[0];
  const x = Math.min(Math.max(inView.left + inView.width / 2, 0), innerWidth - 1);
  const y = Math.min(Math.max(inView.top + inView.height / 2, 0), innerHeight - 1);
  let hit = document.elementFromPoint(x, y);
  while (hit && hit.shadowRoot) {
    const inner = hit.shadowRoot.elementFromPoint(x, y);
    if (!inner || inner === hit) break;
    hit = inner;
  }
  const label = hit && hit.closest ? hit.closest('label') : null;
  const ok = hit && (hit === el || el.contains(hit) || (label && label.control === el));
  if (!ok && !a.force) return { status: 'covered', element, by: hit ? describe(hit) : 'nothing' };
  return { status: 'ok', x, y, count: f.count, element, covered: !ok };
}
