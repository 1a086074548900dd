// The demo page's script (GET /demo.js): the host page's own button drives the widget
// through its public API. An event listener, not an inline onclick, so the page's
// Content-Security-Policy can forbid inline scripts.
document.getElementById('open-chat').addEventListener('click', function () {
  if (window.Confab) window.Confab.open();
});
