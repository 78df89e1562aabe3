// Postroom webmail: keyboard shortcuts and drag and drop, over the pages' own links and forms. Framework-free,
// no inline script; without it every action is still a link or a button. The shortcuts bound are the ones this
// server has pages for (the help dialog, "?", lists them): j/k next/previous message, o or Enter open it,
// r reply, a reply all, f forward (on a message's page: its own links), c write a message, e archive, # delete,
// / search, ? this help. Typing in a field is never taken as a shortcut.
(function () {
  "use strict";
  var help = document.getElementById("keys-help");

  function rows() { return Array.prototype.slice.call(document.querySelectorAll("#rows tbody tr")); }
  function cursor() { return document.querySelector("#rows tr.cursor"); }

  function move(step) {
    var all = rows();
    if (!all.length) { return; }
    var now = cursor();
    var i = now ? all.indexOf(now) + step : 0;
    var next = all[Math.max(0, Math.min(all.length - 1, i))];
    if (now) { now.classList.remove("cursor"); }
    next.classList.add("cursor");
    var link = next.querySelector("td.subject a");
    if (link) { link.focus(); }
  }

  function open() {
    var now = cursor();
    var link = now && now.querySelector("td.subject a");
    if (link) { link.click(); return true; }
    return false;
  }

  // A list action (archive, delete) on the selected messages, or on the keyboard's row when none is selected;
  // on a reading page, on its message.
  function act(action) {
    var list = document.getElementById("list-form");
    var form = list || document.querySelector("form.message-actions");
    if (!form) { return false; }
    var button = form.querySelector('button[name=action][value="' + action + '"]');
    if (!button) { return false; }
    if (list && !list.querySelector("input[name=uid]:checked")) {
      var now = cursor();
      var box = now && now.querySelector("input[name=uid]");
      if (!box) { return false; }
      box.checked = true;
    }
    button.click();
    return true;
  }

  // The reading page's own link for a way of answering ("reply", "all", "forward"); false where there is none.
  function answer(mode) {
    var link = document.querySelector('a[href^="/mail/compose?mode=' + mode + '&"]');
    if (link) { link.click(); return true; }
    return false;
  }

  function showHelp() {
    if (help && typeof help.showModal === "function" && !help.open) { help.showModal(); }
  }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.defaultPrevented) { return; }
    var t = e.target;
    if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) { return; }
    if (help && help.open) { return; }  // the dialog has its own keys (Escape closes it)
    var done = true;
    switch (e.key) {
      case "j": move(1); break;
      case "k": move(-1); break;
      case "o": done = open(); break;
      case "Enter": done = !(t && t.closest && t.closest("a, button")) && open(); break;
      case "r": done = answer("reply"); break;
      case "a": done = answer("all"); break;
      case "f": done = answer("forward"); break;
      case "c": window.location.assign("/mail/compose"); break;
      case "e": done = act("archive"); break;
      case "#": done = act("delete"); break;
      case "/":
        var q = document.getElementById("q");
        if (q) { q.focus(); q.select(); } else { done = false; }
        break;
      case "?": showHelp(); break;
      default: done = false;
    }
    if (done) { e.preventDefault(); }
  });

  if (help) {
    var close = help.querySelector("button.close");
    if (close) { close.addEventListener("click", function () { help.close(); }); }
  }
  var opener = document.getElementById("keys-help-open");
  if (opener) { opener.hidden = false; opener.addEventListener("click", showHelp); }

  // Drag a message row (or the selected ones) onto a folder of the tree: the list form's own Move.
  function draggable() { rows().forEach(function (r) { r.setAttribute("draggable", "true"); }); }
  draggable();
  document.addEventListener("postroom:listchanged", draggable);
  document.addEventListener("dragstart", function (e) {
    var row = e.target && e.target.closest && e.target.closest("#rows tr[data-uid]");
    if (!row) { return; }
    e.dataTransfer.setData("text/plain", row.getAttribute("data-uid"));
    e.dataTransfer.effectAllowed = "move";
  });
  function folderOf(e) {
    var link = e.target && e.target.closest && e.target.closest("nav.folders a[data-box]");
    var select = document.getElementById("dest");
    if (!link || !select || !document.getElementById("list-form")) { return null; }
    var id = link.getAttribute("data-box");
    return select.querySelector('option[value="' + id + '"]') ? { link: link, id: id, select: select } : null;
  }
  document.addEventListener("dragover", function (e) {
    var f = folderOf(e);
    if (f) { e.preventDefault(); e.dataTransfer.dropEffect = "move"; f.link.classList.add("drop"); }
  });
  document.addEventListener("dragleave", function (e) {
    var f = folderOf(e);
    if (f) { f.link.classList.remove("drop"); }
  });
  document.addEventListener("drop", function (e) {
    var f = folderOf(e);
    if (!f) { return; }
    e.preventDefault();
    var uid = e.dataTransfer.getData("text/plain");
    var box = document.querySelector('#rows input[name=uid][value="' + uid + '"]');
    if (!box) { return; }
    if (!box.checked) {  // a row not among the selected ones moves alone
      document.querySelectorAll("#rows input[name=uid]:checked").forEach(function (c) { c.checked = false; });
      box.checked = true;
    }
    f.select.value = f.id;
    document.querySelector('#list-form button[name=action][value="move"]').click();
  });
}());
