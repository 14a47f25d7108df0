// medserve console: live figures over server-sent events, and confirmations. No library.
(function () {
  "use strict";
  function lookup(data, path) {
    return path.split(".").reduce(function (v, k) { return v == null ? undefined : v[k]; }, data);
  }
  function show(value, format) {
    if (value === null || value === undefined) { return "–"; }
    if (format === "ms") { return value >= 100 ? Math.round(value).toLocaleString() : Number(value).toPrecision(3); }
    if (format === "pct") { return Math.round(value * 100) + " %"; }
    if (format === "num") { return Number(value).toLocaleString(undefined, { maximumFractionDigits: 2 }); }
    return String(value);
  }
  function apply(data) {
    document.querySelectorAll("[data-live]").forEach(function (el) {
      var value = lookup(data, el.getAttribute("data-live"));
      if (value === undefined) { return; }
      if (el.tagName === "PROGRESS" || el.tagName === "METER") {
        if (value !== null) { el.value = value; }
      } else {
        el.textContent = show(value, el.getAttribute("data-format"));
      }
    });
  }
  function connect() {
    var status = document.getElementById("live-state");
    if (!window.EventSource || !status) { return; }
    var source = new EventSource("/console/events");
    source.addEventListener("live", function (event) {
      apply(JSON.parse(event.data));
      status.textContent = "live, updated " + new Date().toLocaleTimeString();
    });
    source.addEventListener("signed-out", function () {
      source.close();
      status.textContent = "signed out";
      window.location.assign("/console/signin");
    });
    source.onerror = function () { status.textContent = "reconnecting…"; };
    // Close the stream when leaving the page: a browser may keep it open while it keeps the page
    // (back-forward cache), and each open stream holds one of its few connections to the server.
    window.addEventListener("pagehide", function () { source.close(); });
    window.addEventListener("pageshow", function (event) { if (event.persisted) { connect(); } });
  }
  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) { event.preventDefault(); }
  });
  document.addEventListener("DOMContentLoaded", connect);
})();
