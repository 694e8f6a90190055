// A compact accessibility tree of the page (or of one element), one line per node:
//   - role "name" [attributes] [ref=eN]
// Every element line carries a ref kept in a data-agentbox-ref attribute, so the same
// element keeps its ref across snapshots while the page is unchanged. Called with
// { selector, interactiveOnly, offset, limit } and returns one window of the lines.
(opts) => {
  const ATTR = 'data-agentbox-ref';
  const SEQ = '__agentboxRefSeq';
  if (typeof window[SEQ] !== 'number') {
    let max = 0;
    for (const el of document.querySelectorAll('[' + ATTR + ']')) {
      const n = parseInt((el.getAttribute(ATTR) || '').slice(1), 10);
      if (n > max) max = n;
    }
    Object.defineProperty(window, SEQ, { value: max, writable: true, enumerable: false, configurable: true });
  }
  let root = document.body || document.documentElement;
  if (opts.selector) {
    try {
      root = document.querySelector(opts.selector);
    } catch (e) {
      return { error: 'bad_selector', message: String(e && e.message) };
    }
    if (!root) return { error: 'missing' };
  }
  if (!root) return { lines: [], total: 0, offset: 0, next_offset: null };

  const seen = new Set();
  const refOf = (el) => {
    let r = el.getAttribute(ATTR);
    if (!r || seen.has(r) || !/^e\d+$/.test(r)) {
      window[SEQ] += 1;
      r = 'e' + window[SEQ];
      el.setAttribute(ATTR, r);
    }
    seen.add(r);
    return r;
  };
  const norm = (s) => (s || '').replace(/\s+/g, ' ').trim();
  const clip = (s, n) => (s.length > n ? s.slice(0, n - 1) + '\u2026' : s);
  const quote = (s) => JSON.stringify(s);

  const SKIP = new Set(['SCRIPT', 'STYLE', 'NOSCRIPT', 'TEMPLATE', 'HEAD', 'META', 'LINK', 'TITLE', 'BASE']);
  const INPUT_ROLES = {
    button: 'button', submit: 'button', reset: 'button', image: 'button', file: 'button', color: 'button',
    checkbox: 'checkbox', radio: 'radio', range: 'slider', number: 'spinbutton', search: 'searchbox',
    hidden: '',
  };
  const INTERACTIVE = new Set([
    'button', 'link', 'textbox', 'searchbox', 'checkbox', 'radio', 'combobox', 'listbox', 'option', 'slider',
    'spinbutton', 'switch', 'tab', 'menuitem', 'menuitemcheckbox', 'menuitemradio', 'treeitem', 'clickable',
  ]);
  const NAME_FROM_CONTENT = new Set([
    'button', 'link', 'heading', 'option', 'tab', 'menuitem', 'menuitemcheckbox', 'menuitemradio', 'cell',
    'columnheader', 'rowheader', 'treeitem', 'checkbox', 'radio', 'switch', 'tooltip', 'clickable',
  ]);
  const LANDMARK_PARENTS = 'article,aside,main,nav,section';

  const roleOf = (el) => {
    const explicit = (el.getAttribute('role') || '').trim().split(/\s+/)[0].toLowerCase();
    if (explicit === 'none' || explicit === 'presentation' || explicit === 'generic') return '';
    if (explicit) return explicit;
    switch (el.tagName) {
      case 'A': case 'AREA': return el.hasAttribute('href') ? 'link' : '';
      case 'BUTTON': case 'SUMMARY': return 'button';
      case 'INPUT': {
        const t = (el.getAttribute('type') || 'text').toLowerCase();
        return t in INPUT_ROLES ? INPUT_ROLES[t] : 'textbox';
      }
      case 'TEXTAREA': return 'textbox';
      case 'SELECT': return el.multiple || el.size > 1 ? 'listbox' : 'combobox';
      case 'OPTION': return 'option';
      case 'H1': case 'H2': case 'H3': case 'H4': case 'H5': case 'H6': return 'heading';
      case 'IMG': return el.getAttribute('alt') === '' ? '' : 'img';
      case 'NAV': return 'navigation';
      case 'MAIN': return 'main';
      case 'HEADER': return el.parentElement && el.parentElement.closest(LANDMARK_PARENTS) ? '' : 'banner';
      case 'FOOTER': return el.parentElement && el.parentElement.closest(LANDMARK_PARENTS) ? '' : 'contentinfo';
      case 'ASIDE': return 'complementary';
      case 'FORM': return 'form';
      case 'SECTION':
        return el.hasAttribute('aria-label') || el.hasAttribute('aria-labelledby') ? 'region' : '';
      case 'ARTICLE': return 'article';
      case 'UL': case 'OL': case 'MENU': return 'list';
      case 'LI': return 'listitem';
      case 'DL': return 'list';
      case 'DT': case 'DD': return 'listitem';
      case 'TABLE': return 'table';
      case 'TR': return 'row';
      case 'TH': return 'columnheader';
      case 'TD': return 'cell';
      case 'DIALOG': return 'dialog';
      case 'FIELDSET': case 'DETAILS': return 'group';
      case 'P': return 'paragraph';
      case 'HR': return 'separator';
      case 'IFRAME': case 'FRAME': return 'iframe';
      case 'PROGRESS': return 'progressbar';
      case 'METER': return 'meter';
      case 'BLOCKQUOTE': return 'blockquote';
      case 'PRE': return 'code';
      default: break;
    }
    if (el.isContentEditable && el.hasAttribute('contenteditable')) return 'textbox';
    return '';
  };

  const byIds = (ids) =>
    norm(ids.split(/\s+/).map((id) => {
      const t = document.getElementById(id);
      return t ? t.innerText || t.textContent : '';
    }).join(' '));

  // A label's text without the text of the controls inside it (a <select>'s options, say).
  const CONTROLS = new Set(['SELECT', 'INPUT', 'TEXTAREA', 'BUTTON']);
  const labelText = (label) => {
    const parts = [];
    const collect = (n) => {
      if (n.nodeType === Node.TEXT_NODE) parts.push(n.nodeValue);
      else if (n.nodeType === Node.ELEMENT_NODE && !CONTROLS.has(n.tagName) && !SKIP.has(n.tagName)) {
        for (const c of n.childNodes) collect(c);
      }
    };
    collect(label);
    return parts.join('');
  };

  const nameOf = (el, role) => {
    const labelledby = el.getAttribute('aria-labelledby');
    if (labelledby) {
      const n = byIds(labelledby);
      if (n) return { name: n, fromContent: false };
    }
    const aria = norm(el.getAttribute('aria-label'));
    if (aria) return { name: aria, fromContent: false };
    const tag = el.tagName;
    if (tag === 'INPUT' || tag === 'TEXTAREA' || tag === 'SELECT') {
      const t = (el.getAttribute('type') || '').toLowerCase();
      if (tag === 'INPUT' && (t === 'submit' || t === 'reset' || t === 'button')) {
        return { name: norm(el.value) || (t === 'submit' ? 'Submit' : t === 'reset' ? 'Reset' : ''), fromContent: false };
      }
      if (tag === 'INPUT' && t === 'image') return { name: norm(el.getAttribute('alt')) || 'Submit', fromContent: false };
      const labels = el.labels ? Array.from(el.labels).map(labelText).join(' ') : '';
      const n = norm(labels) || norm(el.getAttribute('title')) || norm(el.getAttribute('placeholder'));
      return { name: n, fromContent: false };
    }
    if (tag === 'IMG' || tag === 'AREA') return { name: norm(el.getAttribute('alt')) || norm(el.getAttribute('title')), fromContent: false };
    if (tag === 'FIELDSET') {
      const legend = el.querySelector(':scope > legend');
      if (legend) return { name: norm(legend.innerText), fromContent: false };
    }
    if (tag === 'TABLE') {
      const caption = el.querySelector(':scope > caption');
      if (caption) return { name: norm(caption.innerText), fromContent: false };
    }
    if (NAME_FROM_CONTENT.has(role)) {
      const n = norm(el.innerText !== undefined ? el.innerText : el.textContent);
      if (n) return { name: n, fromContent: true };
    }
    return { name: norm(el.getAttribute('title')), fromContent: false };
  };

  const attrsOf = (el, role) => {
    const a = [];
    if (role === 'heading') {
      const m = /^H([1-6])$/.exec(el.tagName);
      const level = el.getAttribute('aria-level') || (m ? m[1] : '');
      if (level) a.push('[level=' + level + ']');
    }
    if (role === 'checkbox' || role === 'radio' || role === 'switch' || role === 'menuitemcheckbox') {
      const aria = el.getAttribute('aria-checked');
      const checked = el.tagName === 'INPUT' ? (el.indeterminate ? 'mixed' : el.checked) : aria === 'true' ? true : aria === 'mixed' ? 'mixed' : false;
      if (checked === true) a.push('[checked]');
      else if (checked === 'mixed') a.push('[checked=mixed]');
    }
    if (el.tagName === 'OPTION' ? el.selected : el.getAttribute('aria-selected') === 'true') a.push('[selected]');
    const expanded = el.getAttribute('aria-expanded');
    if (expanded === 'true' || expanded === 'false') a.push('[expanded=' + expanded + ']');
    if (el.tagName === 'DETAILS') a.push(el.open ? '[expanded=true]' : '[expanded=false]');
    if (el.disabled || el.getAttribute('aria-disabled') === 'true') a.push('[disabled]');
    if (el.required || el.getAttribute('aria-required') === 'true') a.push('[required]');
    if (el.readOnly && (el.tagName === 'INPUT' || el.tagName === 'TEXTAREA')) a.push('[readonly]');
    if (role === 'textbox' || role === 'searchbox' || role === 'spinbutton' || role === 'slider' || (role === 'combobox' && el.tagName === 'INPUT')) {
      let v = el.tagName === 'INPUT' || el.tagName === 'TEXTAREA' ? el.value : el.isContentEditable ? el.innerText : el.getAttribute('aria-valuenow');
      if (v) {
        if (el.type === 'password') v = '\u2022'.repeat(Math.min(v.length, 8));
        a.push('[value=' + quote(clip(norm(v), 100)) + ']');
      }
    }
    if (role === 'combobox' && el.tagName === 'SELECT') {
      const sel = el.selectedOptions && el.selectedOptions[0];
      if (sel) a.push('[value=' + quote(clip(norm(sel.label || sel.text), 100)) + ']');
    }
    if (role === 'link') {
      const href = el.getAttribute('href');
      if (href) a.push('[url=' + clip(href, 120) + ']');
    }
    if (role === 'iframe' && el.getAttribute('src')) a.push('[url=' + clip(el.getAttribute('src'), 120) + ']');
    return a;
  };

  const visible = (el) => {
    if (el.hidden) return false;
    if (typeof el.checkVisibility === 'function') return el.checkVisibility({ visibilityProperty: true });
    const s = getComputedStyle(el);
    return s.display !== 'none' && s.visibility !== 'hidden';
  };
  const isContents = (el) => getComputedStyle(el).display === 'contents';
  const clickable = (el) => {
    if (el.hasAttribute('onclick')) return true;
    if (el.hasAttribute('tabindex') && el.tabIndex >= 0) return true;
    const cursor = getComputedStyle(el).cursor;
    if (cursor !== 'pointer') return false;
    const parent = el.parentElement;
    return !parent || getComputedStyle(parent).cursor !== 'pointer';
  };

  // Items: { text } or { role, name, attrs, ref, children, inline }.
  const walk = (node, out) => {
    if (node.nodeType === Node.TEXT_NODE) {
      // Whitespace is kept (collapsed) so that text split across inline elements joins up as shown.
      const t = (node.nodeValue || '').replace(/\s+/g, ' ');
      if (t) out.push({ text: t });
      return;
    }
    if (node.nodeType !== Node.ELEMENT_NODE && node.nodeType !== Node.DOCUMENT_FRAGMENT_NODE) return;
    if (node.nodeType === Node.DOCUMENT_FRAGMENT_NODE) {
      for (const c of node.childNodes) walk(c, out);
      return;
    }
    const el = node;
    if (SKIP.has(el.tagName) || el.getAttribute('aria-hidden') === 'true') return;
    // display: contents has no box of its own, but its children are shown.
    if (!visible(el) && (el.hidden || !isContents(el))) return;
    let role = roleOf(el);
    if (!role && el !== root && clickable(el)) role = 'clickable';
    const children = [];
    if (el.tagName !== 'IFRAME' && el.tagName !== 'FRAME') {
      if (el.shadowRoot) walk(el.shadowRoot, children);
      // A closed <details> shows only its summary.
      if (el.tagName === 'DETAILS' && !el.open) {
        const summary = el.querySelector(':scope > summary');
        if (summary) walk(summary, children);
      } else if (el.tagName === 'LABEL' && el.control && el.control !== el) {
        // The label's text names its control: keep only what else it holds (the control, links).
        for (const c of el.childNodes) if (c.nodeType !== Node.TEXT_NODE) walk(c, children);
      } else {
        for (const c of el.childNodes) walk(c, children);
      }
    }
    if (!role || (el === root && !opts.selector)) {
      for (const c of children) out.push(c);
      return;
    }
    const { name, fromContent } = nameOf(el, role);
    const kept = fromContent ? children.filter((c) => c.text === undefined) : children;
    out.push({ role, name, attrs: attrsOf(el, role), ref: refOf(el), children: kept });
  };

  const merge = (items) => {
    const out = [];
    for (const it of items) {
      const last = out[out.length - 1];
      if (it.text !== undefined && last && last.text !== undefined) last.text += it.text;
      else out.push(it.text !== undefined ? { text: it.text } : it);
    }
    for (const it of out) if (it.text !== undefined) it.text = norm(it.text);
    return out.filter((it) => it.text === undefined || it.text);
  };

  const lines = [];
  const render = (items, depth) => {
    const pad = '  '.repeat(depth);
    for (const it of merge(items)) {
      if (it.text) {
        if (!opts.interactiveOnly) lines.push(pad + '- text: ' + clip(it.text, 200));
        continue;
      }
      const show = !opts.interactiveOnly || INTERACTIVE.has(it.role) || it.role === 'heading';
      if (!show) {
        render(it.children, depth);
        continue;
      }
      let line = pad + '- ' + it.role;
      if (it.name) line += ' ' + quote(clip(it.name, 100));
      for (const a of it.attrs) line += ' ' + a;
      line += ' [ref=' + it.ref + ']';
      const kids = merge(it.children);
      if (opts.interactiveOnly) {
        lines.push(line);
        render(kids, depth);
      } else if (kids.length === 1 && kids[0].text) {
        lines.push(line + ': ' + clip(kids[0].text, 200));
      } else if (kids.length > 0) {
        lines.push(line + ':');
        render(kids, depth + 1);
      } else {
        lines.push(line);
      }
    }
  };
  const top = [];
  walk(root, top);
  render(top, 0);

  const enc = new TextEncoder();
  const offset = Math.min(opts.offset || 0, lines.length);
  const out = [];
  let used = 0;
  let i = offset;
  for (; i < lines.length; i++) {
    const n = enc.encode(lines[i]).length + 1;
    if (used + n > opts.limit && out.length > 0) break;
    if (used + n > opts.limit) {
      // A single line longer than the whole budget: cut it rather than return nothing.
      out.push(lines[i].slice(0, Math.max(16, Math.floor(opts.limit / 2))) + '\u2026');
      i++;
      break;
    }
    out.push(lines[i]);
    used += n;
  }
  return { lines: out, total: lines.length, offset, next_offset: i < lines.length ? i : null };
}
