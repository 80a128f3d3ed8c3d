// The console's only script: a section with `data-live="URL"` follows the JSON at URL every
// 700 ms and writes each value into the element inside it with the same `data-field`. Without
// JavaScript the page shows the same after a reload.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const section of document.querySelectorAll("[data-live]")) {
    const url = section.getAttribute("data-live");
    const refresh = async () => {
      try {
        const answer = await fetch(url, { credentials: "same-origin", cache: "no-store" });
        if (answer.status === 401) {
          window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
          return;
        }
        if (!answer.ok) return;
        const values = await answer.json();
        for (const [field, value] of Object.entries(values)) {
          const element = section.querySelector(`[data-field="${field}"]`);
          if (element) element.textContent = value === null ? "" : String(value);
        }
      } catch (_) {
        // The daemon restarting: try again on the next tick.
      }
    };
    setInterval(refresh, 700);
  }
});

// A table body with `data-live-rows="URL"` follows its rows: URL?numbers=… answers, per row key
// (`NUMBER@NODE`: one number can live on two nodes), the values to write into that row's
// `data-field` cells.
document.addEventListener("DOMContentLoaded", () => {
  for (const body of document.querySelectorAll("[data-live-rows]")) {
    const rows = [...body.querySelectorAll("tr[data-number]")];
    if (rows.length === 0) continue;
    const numbers = rows.map((row) => row.getAttribute("data-number")).join(",");
    const url = body.getAttribute("data-live-rows") + "?numbers=" + encodeURIComponent(numbers);
    const refresh = async () => {
      try {
        const answer = await fetch(url, { credentials: "same-origin", cache: "no-store" });
        if (answer.status === 401) {
          window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
          return;
        }
        if (!answer.ok) return;
        const values = await answer.json();
        for (const row of rows) {
          const fields = values[row.getAttribute("data-key")] || {};
          for (const [field, value] of Object.entries(fields)) {
            const cell = row.querySelector(`[data-field="${field}"]`);
            if (cell) cell.textContent = value === null ? "" : String(value);
          }
        }
      } catch (_) {
        // The daemon restarting: try again on the next tick.
      }
    };
    setInterval(refresh, 700);
  }
});
