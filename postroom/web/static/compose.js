// The compose page's enhancements (compose.py): the draft saved while you type, and completion of addresses
// from your correspondents. Without script the form works the same, with "Save draft" and plain inputs.
"use strict";
(function () {
  const form = document.getElementById("compose-form");
  if (!form) return;
  const status = document.getElementById("compose-status");
  const seconds = Number(form.dataset.autosave) || 0;
  let changed = false;
  let saving = false;
  let sending = false;

  function say(text) { if (status) status.textContent = text; }

  function keptList(attachments) {
    const box = document.getElementById("c-kept");
    if (!box) return;
    box.querySelectorAll("label").forEach((l) => l.remove());
    for (const a of attachments) {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "checkbox"; input.name = "keep"; input.value = a.section; input.checked = true;
      const size = document.createElement("span");
      size.className = "meta"; size.textContent = " (" + a.size + ")";
      label.append(input, " " + a.name, size);
      box.append(label);
    }
    box.hidden = attachments.length === 0;
  }

  async function autosave() {
    if (!changed || saving || sending) return;
    saving = true; changed = false;
    const data = new FormData(form);
    data.set("action", "save");
    data.set("autosave", "1");
    try {
      // getAttribute: form.action would be the buttons named "action"
      const r = await fetch(form.getAttribute("action"), { method: "POST", body: data, credentials: "same-origin" });
      const answer = await r.json();
      if (!r.ok) { say("Draft not saved: " + (answer.error || r.status)); changed = true; return; }
      form.elements.namedItem("draft").value = String(answer.draft);
      form.elements.namedItem("source").value = answer.source;
      form.elements.namedItem("attach_message").value = "";
      keptList(answer.attachments);
      const files = document.getElementById("c-files");
      if (files) files.value = "";  // they are in the draft now, listed above
      say("Draft saved at " + new Date().toLocaleTimeString());
    } catch (e) {
      say("Draft not saved (no connection?)"); changed = true;
    } finally {
      saving = false;
      if (waiting !== null) { const button = waiting; waiting = null; form.requestSubmit(button); }
    }
  }

  form.addEventListener("input", () => { changed = true; });

  // Files dropped anywhere on the form join those picked in "Attach files" (the same input, the same upload).
  const picker = document.getElementById("c-files");
  function carriesFiles(e) { return e.dataTransfer && Array.from(e.dataTransfer.types).includes("Files"); }
  form.addEventListener("dragover", (e) => { if (carriesFiles(e)) { e.preventDefault(); form.classList.add("dropping"); } });
  form.addEventListener("dragleave", () => form.classList.remove("dropping"));
  form.addEventListener("drop", (e) => {
    form.classList.remove("dropping");
    if (!picker || !e.dataTransfer || e.dataTransfer.files.length === 0) return;
    e.preventDefault();  // not the browser's own drop (opening the file, or its name typed into the text)
    const all = new DataTransfer();
    for (const f of picker.files) all.items.add(f);
    for (const f of e.dataTransfer.files) all.items.add(f);
    picker.files = all.files;
    changed = true;
    say(all.files.length === 1 ? "1 file to attach" : all.files.length + " files to attach");
  });
  // A send (or save) clicked while a save is on its way waits for it: the form then names the draft just saved,
  // which the server replaces, so no draft is left behind.
  let waiting = null;
  form.addEventListener("submit", (e) => {
    if (saving) { e.preventDefault(); waiting = e.submitter || null; return; }
    sending = true;
  });
  if (seconds > 0) setInterval(autosave, seconds * 1000);

  // Completion: the datalist offers "what you typed before the last comma, " + a known address.
  const list = document.getElementById("c-people");
  let timer = 0;
  async function suggest(input) {
    const text = input.value;
    const cut = text.lastIndexOf(",");
    const before = cut >= 0 ? text.slice(0, cut + 1) + " " : "";
    const word = text.slice(cut + 1).trim();
    if (word.length < 1) { list.replaceChildren(); return; }
    try {
      const r = await fetch("/mail/compose/correspondents?q=" + encodeURIComponent(word),
                            { credentials: "same-origin" });
      if (!r.ok) return;
      const found = await r.json();
      list.replaceChildren(...found.map((a) => { const o = document.createElement("option"); o.value = before + a; return o; }));
    } catch (e) { /* completion is a convenience */ }
  }
  for (const id of ["c-to", "c-cc", "c-bcc"]) {
    const input = document.getElementById(id);
    if (!input || !list) continue;
    input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => suggest(input), 150); });
  }
})();
