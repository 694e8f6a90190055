// Scrolls the window or an element: into view, by an amount, or to the top or bottom.
(find, a) => {
  let target = null;
  if (a.selector || a.ref) {
    try {
      target = find(a).el;
    } catch (e) {
      return { status: 'bad_selector', message: String(e && e.message) };
    }
    if (!target) return { status: 'missing' };
  }
  const page = document.scrollingElement || document.documentElement;
  if (target && a.dx == null && a.dy == null && a.to == null) {
    target.scrollIntoView({ block: 'center', inline: 'nearest', behavior: 'instant' });
  } else {
    const s = target || page;
    if (a.to === 'top') s.scrollTo({ top: 0, behavior: 'instant' });
    else if (a.to === 'bottom') s.scrollTo({ top: s.scrollHeight, behavior: 'instant' });
    else {
      const dy = a.dy == null ? (a.dx == null ? Math.round(innerHeight * 0.8) : 0) : a.dy;
      s.scrollBy({ left: a.dx || 0, top: dy, behavior: 'instant' });
    }
  }
  const out = {
    status: 'ok',
    scroll_x: Math.round(scrollX),
    scroll_y: Math.round(scrollY),
    page_width: page.scrollWidth,
    page_height: page.scrollHeight,
    viewport_width: innerWidth,
    viewport_height: innerHeight,
    at_bottom: Math.ceil(scrollY + innerHeight) >= page.scrollHeight,
  };
  if (target && (a.dx != null || a.dy != null || a.to != null)) {
    out.element_scroll_top = Math.round(target.scrollTop);
    out.element_scroll_height = target.scrollHeight;
  }
  return out;
}
