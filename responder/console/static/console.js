// falco-responder console: refresh without reloading, fetch partials, check tables as you type.
// Everything inserted comes from the server's own (escaped) templates.
"use strict";

function csrfToken() { return document.body.dataset.csrf || ""; }

async function fetchPartial(url) {
  const reply = await fetch(url, {headers: {"X-Requested-With": "fetch"}, credentials: "same-origin"});
  if (!reply.ok) { throw new Error("HTTP " + reply.status); }
  return reply.text();
}

function setUpTimeline() {
  const button = document.getElementById("refresh");
  const rows = document.getElementById("rows");
  if (!button || !rows) { return; }
  const stamp = document.getElementById("refreshed");
  const auto = document.getElementById("auto-refresh");
  async function refresh() {
    try {
      rows.innerHTML = await fetchPartial(button.dataset.src);
      stamp.textContent = "refreshed " + new Date().toISOString().slice(11, 19) + " UTC";
    } catch (err) {
      stamp.textContent = "refresh failed: " + err.message;
    }
  }
  button.addEventListener("click", refresh);
  setInterval(function () { if (auto && auto.checked) { refresh(); } }, 5000);
}

async function loadPartial(id, what) {
  const box = document.getElementById(id);
  if (!box) { return; }
  try {
    box.innerHTML = await fetchPartial(box.dataset.src);
  } catch (err) {
    box.textContent = "Cannot read the " + what + ": " + err.message;
  }
}

function setUpEditor() {
  const text = document.getElementById("table-text");
  const result = document.getElementById("check-result");
  const state = document.getElementById("check-state");
  const copy = document.getElementById("copy");
  if (!text) { return; }
  if (copy) {
    copy.addEventListener("click", async function () {
      try {
        await navigator.clipboard.writeText(text.value);
        state.textContent = "copied";
      } catch (err) {
        text.select();
        state.textContent = "selected: copy it with Ctrl+C";
      }
    });
  }
  if (text.readOnly) { return; }
  let timer = null;
  let sent = 0;
  async function check() {
    const mine = ++sent;
    state.textContent = "checking…";
    const reply = await fetch(document.getElementById("editor").action.replace(/\/table$/, "/table/check"), {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrfToken(), "X-Requested-With": "fetch"},
      body: JSON.stringify({text: text.value, last: document.getElementById("last").value}),
    });
    if (mine !== sent) { return; }  // a newer check is on its way
    if (!reply.ok) { state.textContent = "check failed: HTTP " + reply.status; return; }
    const found = await reply.json();
    result.innerHTML = found.html;
    state.textContent = found.ok ? "valid" : found.problems.length + " problem(s)";
  }
  text.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(check, 400);
  });
}

document.addEventListener("DOMContentLoaded", function () {
  setUpTimeline();
  loadPartial("audit", "audit Events");
  loadPartial("evidence", "evidence bundles");
  setUpEditor();
});
