/* Export page: direct download (GET form) and versioned snapshots via the exports API. */
"use strict";
(function () {
  const T = window.Tandem;
  const cfg = T.config("export-config");
  const $ = (id) => document.getElementById(id);

  function filters() {
    const data = new FormData($("export-form"));
    const out = {};
    for (const [k, v] of data.entries()) if (v !== "" && k !== "format") out[k] = v;
    return { format: data.get("format"), filters: out };
  }

  // Empty filters are left out of the download URL.
  $("export-form").addEventListener("submit", () => {
    for (const input of $("export-form").querySelectorAll("input, select")) {
      input.disabled = input.value === "";
    }
    setTimeout(() => { for (const i of $("export-form").querySelectorAll("input, select")) i.disabled = false; }, 0);
  });

  $("snapshot").addEventListener("click", async () => {
    const resp = await T.api("POST", cfg.api.create, filters());
    $("export-status").textContent = resp.ok ? "Snapshot queued (export " + resp.data.export_id + ")." : "Could not start the export: " + T.errorText(resp);
    list();
  });

  async function list() {
    const resp = await T.api("GET", cfg.api.list);
    const box = $("exports");
    if (!resp.ok) { if (resp.status !== 404) box.replaceChildren(T.el("p", { class: "flash flash-error" }, T.errorText(resp))); return; }
    const items = resp.data.exports || resp.data.items || [];
    if (!items.length) return;
    const table = T.el("table");
    const head = T.el("tr");
    ["Created", "Format", "State", "Rows", "SHA-256", ""].forEach((h) => head.append(T.el("th", { scope: "col" }, h)));
    table.append(T.el("thead")); table.tHead.append(head);
    const body = T.el("tbody");
    for (const e of items) {
      const id = e.export_id || e.id;
      const tr = T.el("tr");
      tr.append(T.el("td", null, e.created_at ? new Date(e.created_at).toLocaleString() : "—"), T.el("td", null, e.format),
        T.el("td", null, e.state), T.el("td", null, e.row_count !== null && e.row_count !== undefined ? e.row_count : "—"),
        T.el("td", { class: "mono" }, e.sha256 ? e.sha256.slice(0, 12) + "…" : "—"));
      const cell = T.el("td");
      if (e.state === "done") cell.append(T.el("a", { href: cfg.api.export + id + "/download", class: "button small" }, "Download"));
      else if (e.state === "failed" && e.error) {
        // Say why, in one line (the full text is in the export's API view and the audit log).
        const reason = String(e.error).split("\n")[0];
        cell.append(T.el("span", { class: "flash-error export-error", title: String(e.error) }, "Failed: " + (reason.length > 160 ? reason.slice(0, 160) + "…" : reason)));
      }
      tr.append(cell);
      body.append(tr);
    }
    table.append(body);
    const wrap = T.el("div", { class: "table-wrap" }); wrap.append(table);
    box.replaceChildren(wrap);
  }
  list();
})();
