// Postroom webmail: live updates of the open message list (postroom/web/live.py). Framework-free, no inline
// script. The page works without it; with it, the list and the folder tree follow the mailbox as mail arrives,
// flags change or messages go, from any client. Events only say that something changed: the page refetches its
// own URL and swaps the list, the paging links and the folder tree, so the rows are the server's own rendering.
(function () {
  "use strict";
  var main = document.querySelector("main[data-events]");
  if (!main || !window.EventSource || !window.fetch || !window.DOMParser) { return; }
  var box = main.getAttribute("data-box");
  var status = document.getElementById("live-status");
  var timer = null, busy = false, again = false, arrived = 0, opened = false;

  function swap(doc, selector) {
    var now = document.querySelector(selector), next = doc.querySelector(selector);
    if (now && next) { now.replaceWith(document.importNode(next, true)); }
  }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    var checked = {};
    document.querySelectorAll("#rows input[name=uid]:checked").forEach(function (c) { checked[c.value] = true; });
    var cursor = document.querySelector("#rows tr.cursor");  // the keyboard's row (keys.js) stays put
    var cursorUid = cursor ? cursor.getAttribute("data-uid") : null;
    fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } }).then(function (r) {
      if (r.redirected || !r.ok) { location.reload(); return null; }
      return r.text();
    }).then(function (html) {
      if (html === null) { return; }
      var doc = new DOMParser().parseFromString(html, "text/html");
      swap(doc, "#rows");
      swap(doc, "nav.pages");
      swap(doc, "nav.folders");
      document.querySelectorAll("#rows input[name=uid]").forEach(function (c) { c.checked = !!checked[c.value]; });
      if (cursorUid) {
        var row = document.querySelector('#rows tr[data-uid="' + cursorUid + '"]');
        if (row) { row.classList.add("cursor"); }
      }
      if (arrived && status) {
        status.textContent = arrived === 1 ? "A new message arrived." : arrived + " new messages arrived.";
      }
      arrived = 0;
      document.dispatchEvent(new CustomEvent("postroom:listchanged"));
    }).catch(function () { /* offline for a moment: the next event or reconnection refetches */ })
      .finally(function () {
        busy = false;
        if (again) { again = false; soon(); }
      });
  }

  function soon() {
    if (timer === null) { timer = setTimeout(function () { timer = null; refresh(); }, 100); }
  }

  var source = new EventSource(main.getAttribute("data-events"));
  source.addEventListener("open", function () { if (opened) { soon(); } opened = true; });
  source.addEventListener("message", function (e) {
    try {
      var change = JSON.parse(e.data);
      if (change.kind === "append" && String(change.mailbox) === box) { arrived += 1; }
    } catch (err) { /* a record we cannot read still means: refetch */ }
    soon();
  });
  source.addEventListener("folders", soon);
  source.addEventListener("stale", soon);
  source.addEventListener("overflow", soon);  // the stream ends; the browser reconnects and "open" refetches
  source.addEventListener("signedout", function () { source.close(); location.reload(); });
  window.addEventListener("pagehide", function () { source.close(); });
}());
