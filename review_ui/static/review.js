/* The review page: one case at a time, keyboard first, no page reloads.
   Blind (docs/review.md): the claimed case carries no model suggestion and nothing that
   tells an audit apart, and this page shows every case the same way. */
"use strict";
(function () {
  const T = window.Tandem;
  const cfg = T.config("review-config");
  const $ = (id) => document.getElementById(id);
  const state = { current: null, lastDecided: null, skipped: [], busy: false };

  function setStatus(text, kind) {
    const s = $("status");
    s.textContent = text || "";
    s.className = "status" + (kind ? " status-" + kind : "");
  }

  function formatValue(field, value) {
    if (value === null || value === undefined) return "(empty)";
    if (field.type === "boolean") return value ? "yes" : "no";
    if (field.type === "number") return Number(value).toLocaleString();
    return String(value);
  }

  function showDone() {
    state.current = null;
    $("workspace").dataset.caseId = "";
    $("workspace").hidden = true;
    $("done").hidden = false;
    $("check-again").focus();
  }

  function render(c) {
    state.current = c;
    $("workspace").dataset.caseId = c.case_id;
    $("done").hidden = true;
    $("workspace").hidden = false;
    $("case-id").textContent = c.case_id.slice(-8);
    const meta = [];
    if (c.external_id) meta.push("external id " + c.external_id);
    meta.push("received " + new Date(c.created_at).toLocaleString());
    if (c.sla_breached) meta.push("past its SLA");
    $("case-meta").textContent = meta.join(" · ");

    const dl = $("fields");
    dl.replaceChildren();
    const outOfRange = new Set(c.out_of_range || []);
    for (const field of cfg.fields) {
      const wrap = T.el("div", { class: "field field-" + field.type });
      const dt = T.el("dt", null, field.name);
      if (outOfRange.has(field.name)) dt.append(T.el("span", { class: "badge warn" }, "unusual value"));
      wrap.append(dt, T.el("dd", null, formatValue(field, c.input ? c.input[field.name] : null)));
      dl.append(wrap);
    }

    let why = cfg.reasons[c.reason] || c.reason;
    if (outOfRange.size) why += " Fields: " + Array.from(outOfRange).join(", ") + ".";
    $("why").textContent = why;

    const labels = $("labels");
    labels.replaceChildren();
    cfg.labels.forEach((label, i) => {
      const btn = T.el("button", { type: "button", class: "label-btn", "data-label": label });
      if (i < 9) btn.append(T.el("kbd", null, String(i + 1)));
      btn.append(document.createTextNode(" " + label));
      btn.addEventListener("click", () => decide(label));
      labels.append(btn);
    });
    $("comment").value = "";
    $("undo").disabled = !state.lastDecided;
  }

  async function claim() {
    setStatus("Loading the next case…");
    const resp = await T.api("POST", cfg.api.claim, { exclude: state.skipped.slice(-200) });
    if (resp.status === 204) { setStatus(""); showDone(); return; }
    if (!resp.ok) { setStatus(T.errorText(resp), "error"); return; }
    setStatus("");
    render(resp.data);
  }

  async function run(fn) {
    if (state.busy) return;
    state.busy = true;
    try { await fn(); } finally { state.busy = false; }
  }

  function decide(label) {
    return run(async () => {
      const c = state.current;
      if (!c) return;
      const comment = $("comment").value.trim();
      const resp = await T.api("POST", cfg.api.case + c.case_id + "/review", { label: label, comment: comment || null });
      if (!resp.ok) {
        setStatus(T.errorText(resp) + " — loading another case.", "error");
        await claim();
        return;
      }
      state.lastDecided = { id: c.case_id, label: label };
      await claim();
      setStatus("Saved: " + label + ". Press u to undo.", "ok");
    });
  }

  function skip() {
    return run(async () => {
      const c = state.current;
      if (!c) return;
      state.skipped.push(c.case_id);
      await T.api("POST", cfg.api.case + c.case_id + "/release");
      await claim();
      setStatus("Skipped.", "ok");
    });
  }

  function undo() {
    return run(async () => {
      const last = state.lastDecided;
      if (!last) { setStatus("Nothing to undo.", "error"); return; }
      const current = state.current;
      if (current) await T.api("POST", cfg.api.case + current.case_id + "/release");
      const resp = await T.api("POST", cfg.api.case + last.id + "/undo");
      state.lastDecided = null;
      if (!resp.ok) {
        setStatus("Could not undo: " + T.errorText(resp), "error");
        await claim();
        return;
      }
      render(resp.data);
      setStatus("Undone: decide this case again.", "ok");
    });
  }

  function typing(target) {
    return target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT" || target.tagName === "SELECT");
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const help = $("help");
    if (help.open) return;
    if (typing(ev.target)) {
      if (ev.key === "Escape") ev.target.blur();
      return;
    }
    if (ev.key === "?") { ev.preventDefault(); help.showModal(); return; }
    if (ev.key === "u") { ev.preventDefault(); undo(); return; }
    if (!state.current) return;
    if (/^[1-9]$/.test(ev.key)) {
      const label = cfg.labels[Number(ev.key) - 1];
      if (label !== undefined) { ev.preventDefault(); decide(label); }
      return;
    }
    if (ev.key === "Enter") {
      if (ev.target && ev.target.tagName === "BUTTON") return; // let buttons act normally
      ev.preventDefault();
      setStatus("Pick a label with 1–9.", "error");
      return;
    }
    if (ev.key === "s") { ev.preventDefault(); skip(); }
  });

  $("skip").addEventListener("click", skip);
  $("undo").addEventListener("click", undo);
  $("check-again").addEventListener("click", () => run(claim));
  run(claim);
})();
