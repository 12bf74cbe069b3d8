// Follows $all: each server-sent `row` is a table row rendered by the
// server, appended as it comes. No framework, no client-side templates.
(function () {
  "use strict";
  const table = document.getElementById("all");
  const status = document.getElementById("status");
  if (!table || !status) return;
  const body = table.tBodies[0];
  const source = new EventSource("/all/live?after=" + encodeURIComponent(table.dataset.after));
  source.onopen = function () { status.textContent = "● live"; status.className = "good"; };
  source.onerror = function () { status.textContent = "reconnecting…"; status.className = "warn"; };
  source.addEventListener("row", function (e) {
    body.insertAdjacentHTML("beforeend", e.data);
    while (body.rows.length > 500) body.deleteRow(0);
    const row = body.rows[body.rows.length - 1];
    row.className = "new";
    if (window.innerHeight + window.scrollY >= document.body.offsetHeight - 80) row.scrollIntoView();
  });
  source.addEventListener("failure", function (e) {
    const row = body.insertRow();
    const cell = row.insertCell();
    cell.colSpan = 6;
    cell.className = "bad";
    cell.textContent = e.data;
  });
})();
