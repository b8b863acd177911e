/* The review page: one case at a time, keyboard first, no page reloads.
   Blind (docs/review.md): the claimed case carries no model suggestion and nothing that
   tells an audit apart, and this page shows every case the same way.
   Messages stay until the reviewer's next action: a refused decision is never wiped by the
   next case loading. While "All done" shows, the page checks the queue by itself. */
"use strict";
(function () {
  const T = window.Tandem;
  const cfg = T.config("review-config");
  const $ = (id) => document.getElementById(id);
  // lost: the reviewer may no longer review this task (lostAccess); the page stays quiet.
  const state = { current: null, lastDecided: null, skipped: [], busy: false, lost: false };
  // Decisions saved in this sitting (this tab), kept across a reload of the page.
  const doneKey = "tandem-review-done:" + cfg.task;
  // While "All done" shows: check every POLL_FIRST ms, slowing down to POLL_MAX.
  const POLL_FIRST = 5000, POLL_MAX = 20000;
  const poll = { timer: null, delay: POLL_FIRST };

  function setStatus(text, kind) {
    const s = $("status");
    s.textContent = text || "";
    s.className = "status" + (kind ? " status-" + kind : "");
  }

  function short(caseId) { return "…" + caseId.slice(-8); }

  function doneCount() { return Number(sessionStorage.getItem(doneKey) || 0); }
  function addDone(n) { sessionStorage.setItem(doneKey, String(Math.max(0, doneCount() + n))); }

  async function refreshProgress() {
    const resp = await T.api("GET", cfg.api.progress);
    if (!resp.ok || !resp.data) return;
    const left = resp.data.left;
    $("progress").textContent = left + (left === 1 ? " case" : " cases") + " left · " +
      doneCount() + " done this session";
  }

  function formatValue(field, value) {
    if (value === null || value === undefined) return "(empty)";
    if (field.type === "boolean") return value ? "yes" : "no";
    if (field.type === "number") return Number(value).toLocaleString();
    return String(value);
  }

  function stopPolling() {
    if (poll.timer !== null) clearTimeout(poll.timer);
    poll.timer = null;
  }

  function schedulePoll() {
    stopPolling();
    if (state.lost) return;
    poll.timer = setTimeout(async () => {
      poll.timer = null;
      if (document.visibilityState === "visible") await checkQuietly();
      if (!state.current) {
        poll.delay = Math.min(POLL_MAX, Math.round(poll.delay * 1.5));
        schedulePoll();
      }
    }, poll.delay);
  }

  function showDone() {
    const already = !$("done").hidden;
    state.current = null;
    $("workspace").dataset.caseId = "";
    $("workspace").hidden = true;
    $("done").hidden = false;
    if (already) return; // still polling, at its current pace
    $("check-again").focus();
    poll.delay = POLL_FIRST;
    schedulePoll();
  }

  /* 403 on this page: the reviewer's role or tasks changed since it loaded (an admin's
     change gives back the case they held). Say so in words that fit what was tried, hide
     the case, stop checking. `what` names the refused action: a decision is not saved, an
     undo leaves the decision standing, anything else (a skip, a check) only loses access. */
  function lostAccess(what) {
    const held = state.current;
    state.lost = true;
    stopPolling();
    state.current = null;
    state.lastDecided = null;
    $("workspace").dataset.caseId = "";
    $("workspace").hidden = true;
    $("done").hidden = true;
    $("progress").textContent = "";
    $("key-hints").hidden = true;
    $("no-access-held").hidden = !held;
    const instructions = document.querySelector(".instructions");
    if (instructions) instructions.hidden = true;
    $("no-access").hidden = false;
    $("no-access").querySelector("a").focus();  // the way on, for the keyboard too
    let text = "You may no longer review this task.";
    if (what && what.decided) text = "Not saved: you may no longer review this task.";
    if (what && what.undo) {
      text = "Not undone: you may no longer review this task; your decision on case " +
        short(what.undo.id) + " (" + what.undo.label + ") stands.";
    }
    setStatus(text, "error");
  }

  function render(c, keepComment) {
    stopPolling();
    const sameCase = state.current && state.current.case_id === c.case_id;
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
      const wrap = T.el("div", {
        class: "field field-" + field.type + (field.primary ? " field-primary" : ""),
        "data-field": field.name,
      });
      const dt = T.el("dt", null, field.name);
      if (outOfRange.has(field.name)) dt.append(T.el("span", { class: "badge warn" }, "unusual value"));
      wrap.append(dt, T.el("dd", null, formatValue(field, c.input ? c.input[field.name] : null)));
      dl.append(wrap);
    }

    // One reason per case: the fields are named only when they are the reason.
    let why = cfg.reasons[c.reason] || c.reason;
    if (c.reason === "invalid_input" && outOfRange.size) {
      why += " Fields: " + Array.from(outOfRange).join(", ") + ".";
    }
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
    if (!(keepComment && sameCase)) $("comment").value = "";
    $("undo").disabled = !state.lastDecided;
  }

  // Claim the next case (or the one this reviewer holds). Returns the case shown, or null.
  async function claim() {
    const resp = await T.api("POST", cfg.api.claim, { exclude: state.skipped.slice(-200) });
    if (resp.status === 204) { showDone(); refreshProgress(); return null; }
    if (resp.status === 403) { lostAccess(null); return null; }
    if (!resp.ok) { setStatus("Could not load a case: " + T.errorText(resp), "error"); return null; }
    render(resp.data, true);
    refreshProgress();
    return resp.data;
  }

  async function checkQuietly() {
    if (state.busy || state.current) return;
    state.busy = true;
    try {
      const c = await claim();
      if (c) setStatus("A new case arrived: case " + short(c.case_id) + ".", "ok");
    } finally { state.busy = false; }
  }

  async function run(fn) {
    if (state.busy) return;
    state.busy = true;
    try { await fn(); } finally { state.busy = false; }
  }

  function clock() {
    const d = new Date();
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
  }

  function errorReason(resp) {
    const err = resp.data && resp.data.error;
    return err && err.details ? err.details.reason : null;
  }

  function decide(label) {
    return run(async () => {
      const c = state.current;
      if (!c) return;
      setStatus("");
      const comment = $("comment").value.trim();
      const resp = await T.api("POST", cfg.api.case + c.case_id + "/review", { label: label, comment: comment || null });
      if (resp.status === 403) { lostAccess({ decided: true }); return; }
      if (!resp.ok) {
        // Refused: nothing was saved. Say so, and keep saying it once the next case shows.
        const reason = errorReason(resp);
        const which = "case " + short(c.case_id);
        const next = await claim();
        const again = next && next.case_id === c.case_id;
        let text;
        if (reason === "already_resolved") {
          text = "Not saved: " + which + " was already decided (in another tab or by another reviewer).";
        } else if (reason === "lease_expired" || reason === "lease_lost") {
          // lease_lost: the hold ran out and someone else's claim or an admin's release
          // ended it; the page cannot tell which, so it says what is sure.
          const ended = reason === "lease_expired" ? " expired" :
            " ended (it ran out, or an admin gave the case back to the queue)";
          text = "Not saved: your hold on " + which + ended +
            (again ? "; it was claimed again — decide it again." : ".");
        } else {
          text = "Not saved (" + which + "): " + T.errorText(resp) + (again ? " — try again." : ".");
        }
        if (next && !again) text += " Now showing case " + short(next.case_id) + ".";
        setStatus(text, "error");
        return;
      }
      state.lastDecided = { id: c.case_id, label: label, comment: comment };
      addDone(1);
      await claim();
      setStatus("Saved " + label + " for case " + short(c.case_id) + ". " + UNDO_HINT, "ok");
    });
  }

  function skip() {
    return run(async () => {
      const c = state.current;
      if (!c) return;
      setStatus("");
      state.skipped.push(c.case_id);
      const released = await T.api("POST", cfg.api.case + c.case_id + "/release");
      if (released.status === 403) { lostAccess(null); return; }
      await claim();
      if (state.lost) return;
      setStatus("Skipped case " + short(c.case_id) + ".", "ok");
    });
  }

  // Touch screens have no keys to press: the hint names the button there.
  const UNDO_HINT = window.matchMedia("(hover: none) and (pointer: coarse)").matches ?
    "Undo with the Undo button." : "Press u to undo.";

  function undo() {
    return run(async () => {
      const last = state.lastDecided;
      if (!last) { setStatus("Nothing to undo.", "error"); return; }
      setStatus("");
      const current = state.current;
      if (current) await T.api("POST", cfg.api.case + current.case_id + "/release");
      const resp = await T.api("POST", cfg.api.case + last.id + "/undo");
      state.lastDecided = null;
      if (resp.status === 403) { lostAccess({ undo: last }); return; }
      if (!resp.ok) {
        await claim();
        setStatus("Could not undo case " + short(last.id) + ": " + T.errorText(resp), "error");
        return;
      }
      addDone(-1);
      state.current = null;
      render(resp.data, false);
      $("comment").value = last.comment || "";  // the comment goes back with the decision
      refreshProgress();
      setStatus("Undone: decide case " + short(last.id) + " again.", "ok");
    });
  }

  function checkAgain() {
    return run(async () => {
      setStatus("");
      const c = await claim();
      if (!c) setStatus("Checked at " + clock() + " — nothing new.", "ok");
    });
  }

  function typing(target) {
    return target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT" || target.tagName === "SELECT");
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || state.lost) return;
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
    if (ev.key === "c") { ev.preventDefault(); $("comment").focus(); return; }
    if (ev.key === "s") { ev.preventDefault(); skip(); }
  });

  // Back at the page (another window, another tab): look for new work at once.
  function wake() {
    if (state.current || $("done").hidden || document.visibilityState !== "visible") return;
    poll.delay = POLL_FIRST;
    checkQuietly().then(() => { if (!state.current) schedulePoll(); });
  }
  window.addEventListener("focus", wake);
  document.addEventListener("visibilitychange", wake);

  $("skip").addEventListener("click", skip);
  $("undo").addEventListener("click", undo);
  $("check-again").addEventListener("click", checkAgain);
  run(async () => { await claim(); if ($("status").textContent === "Loading the next case…") setStatus(""); });
})();
