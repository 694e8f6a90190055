// Finds the element an action targets: { ref } (searching open shadow roots too) or { selector }.
// Returns { el, count }; an invalid selector throws a SyntaxError.
(a) => {
  if (a.ref) {
    const sel = '[data-agentbox-ref="' + a.ref + '"]';
    const search = (root) => {
      const hit = root.querySelector(sel);
      if (hit) return hit;
      for (const el of root.querySelectorAll('*')) {
        if (el.shadowRoot) {
          const inner = search(el.shadowRoot);
          if (inner) return inner;
        }
      }
      return null;
    };
    return { el: search(document), count: 1 };
  }
  const all = document.querySelectorAll(a.selector);
  return { el: all[0] || null, count: all.length };
}
