// Run in the page by test_console_browser.py: the lowest text contrast (WCAG 2 ratio) of the visible
// text outside charts, and the controls that have no accessible name or are out of the tab order.

function lum(c) {
  const m = c.match(/rgba?\(([\d.]+), ([\d.]+), ([\d.]+)(?:, ([\d.]+))?\)/);
  if (!m) return null;
  const [r, g, b] = [m[1], m[2], m[3]].map(v => { v = v / 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
  return {l: 0.2126 * r + 0.7152 * g + 0.0722 * b, a: m[4] === undefined ? 1 : Number(m[4])};
}
function background(el) {
  for (; el; el = el.parentElement) { const c = lum(getComputedStyle(el).backgroundColor); if (c && c.a > 0.5) return c.l; }
  return 1;
}
let worst = 21, where = "";
for (const el of document.querySelectorAll("body *")) {
  if (!el.offsetParent || el.closest("svg")) continue;
  const own = Array.from(el.childNodes).some(n => n.nodeType === 3 && n.textContent.trim());
  if (!own) continue;
  const fg = lum(getComputedStyle(el).color).l, bg = background(el);
  const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
  if (ratio < worst) { worst = ratio; where = el.tagName + ": " + el.textContent.trim().slice(0, 40); }
}
const unnamed = Array.from(document.querySelectorAll("a, button, input:not([type=hidden]), textarea, select"))
  .filter(el => el.tabIndex < 0 || !(el.textContent.trim() || el.getAttribute("aria-label")
    || (el.labels && el.labels.length) || el.closest("label")))
  .map(el => el.outerHTML.slice(0, 80));
return [worst, where, unnamed];
