// taskmon dashboard: theme, confirmations, column choice and live task rows.
// Loaded from a file under a Content-Security-Policy without 'unsafe-inline'; every text that came
// from a task is put in the page with textContent, never as HTML.
(function () {
  "use strict";
  var root = document.documentElement;

  // -- theme: light / dark, remembered in this browser ------------------------------------------
  var saved = null;
  try { saved = localStorage.getItem("taskmon-theme"); } catch (e) { saved = null; }
  if (saved === "dark" || saved === "light") { root.setAttribute("data-theme", saved); }
  document.addEventListener("DOMContentLoaded", function () {
    var toggle = document.getElementById("theme-toggle");
    if (toggle) {
      toggle.addEventListener("click", function () {
        var dark = root.getAttribute("data-theme") === "dark" ||
          (!root.getAttribute("data-theme") && window.matchMedia("(prefers-color-scheme: dark)").matches);
        var next = dark ? "light" : "dark";
        root.setAttribute("data-theme", next);
        try { localStorage.setItem("taskmon-theme", next); } catch (e) { /* private mode: not remembered */ }
      });
    }

    // -- actions (replay, revoke, logout, ...): asked for confirmation, sent with the CSRF token ---
    document.querySelectorAll("form[data-action]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        var question = form.getAttribute("data-confirm");
        if (question && !window.confirm(question)) { return; }
        send(form);
      });
    });

    // -- radio buttons that choose which fieldset is sent (the schedule's crontab or interval) ------
    document.querySelectorAll("input[type=radio][data-toggles]").forEach(function (radio) {
      radio.addEventListener("change", function () {
        document.querySelectorAll('input[type=radio][name="' + radio.name + '"]').forEach(function (other) {
          var set = document.getElementById(other.getAttribute("data-toggles"));
          if (set) { set.disabled = !other.checked; }
        });
      });
    });

    // -- the window select on the overview submits itself ------------------------------------------
    document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
      select.addEventListener("change", function () { select.form.submit(); });
    });

    setupColumns();
    setupLive();
  });

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function flash(text) {
    var box = document.getElementById("flash");
    if (!box) { return; }
    box.textContent = text;
    box.classList.remove("hidden");
  }

  // The form's fields as the JSON body of an API call: "true"/"false" become booleans, a field
  // marked data-json is parsed (a list, an object, a number), names starting with "_" stay in the
  // page, and fields of a disabled fieldset are not sent. Throws a one-line error for bad JSON.
  function jsonBody(form) {
    var body = {};
    new FormData(form).forEach(function (value, key) {
      var field = form.elements[key];
      if (field && field.length !== undefined && !field.tagName) { field = field[field.length - 1]; }
      var keep = field && field.hasAttribute && field.hasAttribute("data-keep-empty");
      if (key.charAt(0) === "_" || (value === "" && !keep)) { return; }  // an empty filter field means no filter
      if (field && field.hasAttribute && field.hasAttribute("data-json")) {
        try { body[key] = JSON.parse(value); } catch (e) { throw new Error(key + ": not valid JSON (" + e.message + ")"); }
        return;
      }
      body[key] = value === "true" ? true : value === "false" ? false : value;
    });
    return JSON.stringify(body);
  }

  // Where to go after an action: the answer's "location", or data-next with {field}s of the answer.
  function nextPlace(form, body) {
    if (body.location) { return body.location; }
    var template = form.getAttribute("data-next");
    if (!template) { return window.location.pathname + window.location.search; }
    return template.replace(/\{(\w+)\}/g, function (_, key) { return encodeURIComponent(body[key] || ""); });
  }

  // An answer shown on the page (a dry run, a test e-mail) as text: empty fields left out.
  function showAnswer(box, body) {
    if (!box) { return; }
    var clean = {};
    Object.keys(body).forEach(function (k) { if (body[k] !== "" && body[k] !== null) { clean[k] = body[k]; } });
    box.textContent = JSON.stringify(clean, null, 2);
    box.classList.remove("hidden");
  }

  // POST (or data-method) the form to an API endpoint, as JSON, with the session's X-CSRF-Token header.
  function send(form) {
    var buttons = form.querySelectorAll("button");
    var body;
    try { body = jsonBody(form); } catch (e) { flash(e.message); return; }
    buttons.forEach(function (b) { b.disabled = true; });
    fetch(form.getAttribute("action"), {
      method: form.getAttribute("data-method") || "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrfToken(), "Accept": "application/json", "Content-Type": "application/json" },
      body: body
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        var show = form.getAttribute("data-show");
        if (response.ok && show) { showAnswer(document.querySelector(show), body); buttons.forEach(function (b) { b.disabled = false; }); return; }
        if (response.ok) { window.location.assign(nextPlace(form, body)); return; }
        flash(body.detail || ("the server answered " + response.status));
        buttons.forEach(function (b) { b.disabled = false; });
      });
    }).catch(function (error) {
      flash("cannot reach taskmon: " + error.message);
      buttons.forEach(function (b) { b.disabled = false; });
    });
  }

  // -- column choice on the tasks table, remembered in this browser -------------------------------
  function setupColumns() {
    var box = document.getElementById("columns");
    var table = document.getElementById("runs");
    if (!box || !table) { return; }
    var hidden = {};
    try { hidden = JSON.parse(localStorage.getItem("taskmon-hidden-columns") || "{}"); } catch (e) { hidden = {}; }
    function apply() {
      table.querySelectorAll("[data-col]").forEach(function (cell) {
        cell.classList.toggle("hidden", !!hidden[cell.getAttribute("data-col")]);
      });
    }
    box.querySelectorAll("input[type=checkbox]").forEach(function (input) {
      input.checked = !hidden[input.value];
      input.addEventListener("change", function () {
        if (input.checked) { delete hidden[input.value]; } else { hidden[input.value] = true; }
        try { localStorage.setItem("taskmon-hidden-columns", JSON.stringify(hidden)); } catch (e) { /* not kept */ }
        apply();
      });
    });
    table.applyColumns = apply;
    apply();
  }

  // -- new runs appear on the tasks page as the history gets them (server-sent events) ------------
  function setupLive() {
    var table = document.getElementById("runs");
    if (!table || !table.getAttribute("data-stream") || !window.EventSource) { return; }
    var status = document.getElementById("live-status");
    var body = table.tBodies[0];
    var columns = Array.prototype.map.call(table.tHead.rows[0].cells, function (th) { return th.getAttribute("data-col"); });
    var limit = parseInt(table.getAttribute("data-limit") || "50", 10);
    var source = new EventSource(table.getAttribute("data-stream"));
    source.addEventListener("open", function () { if (status) { status.textContent = "live"; } });
    source.addEventListener("error", function () { if (status) { status.textContent = "reconnecting…"; } });
    source.addEventListener("run", function (event) {
      var run = JSON.parse(event.data);
      var empty = document.getElementById("no-runs");
      if (empty) { empty.remove(); }
      var old = body.querySelector('tr[data-task-id="' + CSS.escape(run.task_id) + '"]');
      var row = buildRow(run, columns);
      if (old) { body.replaceChild(row, old); } else { body.insertBefore(row, body.firstChild); }
      while (body.rows.length > limit) { body.deleteRow(body.rows.length - 1); }
      if (table.applyColumns) { table.applyColumns(); }
    });
  }

  function buildRow(run, columns) {
    var tr = document.createElement("tr");
    tr.className = "fresh";
    tr.setAttribute("data-task-id", run.task_id);
    columns.forEach(function (col) {
      var td = document.createElement("td");
      td.setAttribute("data-col", col);
      var cell = run.cells[col] || {};
      if (cell.cls) { td.className = cell.cls; }
      if (cell.href) {
        var a = document.createElement("a");
        a.href = cell.href;
        a.textContent = cell.text;
        td.appendChild(a);
      } else {
        td.textContent = cell.text === undefined ? "" : cell.text;
      }
      if (cell.title) { td.title = cell.title; }
      tr.appendChild(td);
    });
    return tr;
  }
})();
