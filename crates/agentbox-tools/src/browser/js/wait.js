// Checks the conditions of a wait: an element's state, text shown on the page, text gone.
(find, a) => {
  const res = {};
  if (a.selector || a.ref) {
    let el;
    try {
      el = find(a).el;
    } catch (e) {
      return { error: 'bad_selector', message: String(e && e.message) };
    }
    const shown = !!el && (typeof el.checkVisibility !== 'function' || el.checkVisibility({ visibilityProperty: true })) &&
      el.getClientRects().length > 0;
    const state = a.state || 'visible';
    res.selector = state === 'attached' ? !!el : state === 'detached' ? !el : state === 'visible' ? shown : !shown;
  }
  if (a.text != null || a.text_gone != null) {
    const body = document.body ? document.body.innerText : '';
    if (a.text != null) res.text = body.includes(a.text);
    if (a.text_gone != null) res.text_gone = !body.includes(a.text_gone);
  }
  return res;
}
