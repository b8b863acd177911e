/* Task dashboard: charts from GET /stats, model versions from GET /models. */
"use strict";
(function () {
  const T = window.Tandem;
  const cfg = T.config("dashboard-config");
  const $ = (id) => document.getElementById(id);
  const COLORS = { blue: "#1f5fbf", orange: "#b45309", green: "#15803d", red: "#b91c1c", grey: "#6b7280", band: "rgba(31,95,191,0.15)" };

  function empty(canvasId, isEmpty) {
    const canvas = $(canvasId);
    canvas.parentElement.hidden = isEmpty;
    canvas.parentElement.nextElementSibling.hidden = !isEmpty;
  }

  function fmtBucket(b) {
    const d = new Date(b);
    if (isNaN(d)) return String(b);
    const midnight = d.getHours() === 0 && d.getMinutes() === 0;
    return midnight ? d.toLocaleDateString() : d.toLocaleDateString() + " " + d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function chart(id, config) {
    config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false, interaction: { mode: "index", intersect: false } }, config.options || {});
    // A reload (after an activation) draws on the same canvases: free the old charts first.
    const previous = window.Chart.getChart($(id));
    if (previous) previous.destroy();
    return new window.Chart($(id), config);
  }

  /* A glossary term (review_ui/glossary.py): its plain sentence as tooltip, "?" to the help page. */
  function term(key, text) {
    const g = (cfg.glossary || {})[key];
    if (!g) return document.createTextNode(text || key);
    const span = T.el("span", { class: "term" });
    span.append(T.el("abbr", { title: g.title }, text || g.label),
      T.el("a", { class: "term-help", href: "/help#" + key, title: "What is " + g.label + "?", "aria-label": "What is " + g.label + "?" }, "?"));
    return span;
  }

  function tile(label, value, hint) {
    const t = T.el("div", { class: "tile" });
    const head = T.el("div", { class: "tile-label" });
    if (typeof label === "string") head.textContent = label; else head.append(label);
    t.append(head, T.el("div", { class: "tile-value" }, value));
    if (hint) t.append(T.el("div", { class: "tile-hint" }, hint));
    return t;
  }

  /* Seconds as a person says them: 45 s, 12 min, 3 h 5 min, 2 d 4 h. */
  function age(sec) {
    const s = Math.round(sec);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  function renderTiles(s) {
    const a = s.automation || {};
    const le = s.live_error || {};
    const q = s.queue || {};
    const ttd = s.time_to_decision || {};
    const orr = s.override_rate || {};
    const ag = s.audit_agreement || {};
    const agHint = ag.n ? "n = " + ag.n + (ag.lower !== null && ag.lower !== undefined ? " · " + T.pct(ag.lower, 0) + "–" + T.pct(ag.upper, 0) : "") : "no doubly reviewed audit yet";
    $("tiles").replaceChildren(
      tile(term("automation"), a.rate ? T.pct(a.rate.estimate) : "—", (a.state || "manual") + (a.threshold ? " · threshold τ " + a.threshold.toFixed(3) : "")),
      tile(term("live_error"), le.estimate !== undefined && le.estimate !== null ? T.pct(le.estimate) : "—",
        le.target !== undefined ? "target α " + T.pct(le.target) + (le.upper !== null && le.upper !== undefined ? " · upper " + T.pct(le.upper) : "") : ""),
      tile("Queue", q.depth !== undefined ? String(q.depth) : "—", q.oldest_pending_seconds ? "oldest waiting " + age(q.oldest_pending_seconds) : ""),
      tile("Time to decision", ttd.median_seconds ? age(ttd.median_seconds) : "—", ttd.p90_seconds ? "9 in 10 within " + age(ttd.p90_seconds) : ""),
      tile(term("override_rate"), orr.estimate !== undefined && orr.estimate !== null ? T.pct(orr.estimate) : "—", orr.n ? "n = " + orr.n : ""),
      tile("Audit agreement", ag.n ? T.pct(ag.estimate) : "—", agHint)
    );
  }

  function renderCharts(s) {
    const series = s.series || [];
    const labels = series.map((p) => fmtBucket(p.bucket));
    empty("chart-automation", series.length === 0);
    if (series.length) {
      chart("chart-automation", {
        type: "line",
        data: { labels: labels, datasets: [
          { label: "Automation rate", data: series.map((p) => p.automation_rate), borderColor: COLORS.blue, yAxisID: "y" },
          { label: "Threshold", data: series.map((p) => p.threshold), borderColor: COLORS.orange, borderDash: [6, 4], yAxisID: "y1" },
        ] },
        options: { scales: { y: { min: 0, max: 1, title: { display: true, text: "rate" } }, y1: { position: "right", min: 0.5, max: 1, grid: { drawOnChartArea: false }, title: { display: true, text: "threshold" } } } },
      });
    }
    const errPoints = series.filter((p) => p.live_error !== null && p.live_error !== undefined);
    empty("chart-error", errPoints.length === 0);
    if (errPoints.length) {
      const target = (s.live_error || {}).target;
      chart("chart-error", {
        type: "line",
        data: { labels: errPoints.map((p) => fmtBucket(p.bucket)), datasets: [
          { label: "Upper bound", data: errPoints.map((p) => p.live_error_upper), borderColor: "transparent", backgroundColor: COLORS.band, fill: "+1", pointRadius: 0 },
          { label: "Lower bound", data: errPoints.map((p) => p.live_error_lower), borderColor: "transparent", pointRadius: 0 },
          { label: "Live error", data: errPoints.map((p) => p.live_error), borderColor: COLORS.blue },
          { label: "Target error α", data: errPoints.map(() => target), borderColor: COLORS.red, borderDash: [4, 4], pointRadius: 0 },
        ] },
        options: { scales: { y: { min: 0, title: { display: true, text: "error rate" } } } },
      });
    }
    const q = s.queue || {};
    $("queue-age").textContent = q.depth ? q.depth + " waiting now; the oldest has waited " + age(q.oldest_pending_seconds || 0) + "." : "Nobody is waiting now.";
    empty("chart-queue", series.length === 0);
    if (series.length) {
      chart("chart-queue", {
        data: { labels: labels, datasets: [
          { type: "bar", label: "Queue depth", data: series.map((p) => p.queue_depth), backgroundColor: "rgba(107,114,128,0.5)", yAxisID: "y" },
          { type: "line", label: "Median time to decision (s)", data: series.map((p) => p.median_decision_seconds), borderColor: COLORS.green, yAxisID: "y1" },
        ] },
        options: { scales: { y: { min: 0, title: { display: true, text: "cases" } }, y1: { position: "right", min: 0, grid: { drawOnChartArea: false }, title: { display: true, text: "seconds" } } } },
      });
    }
    const reviewers = s.reviewers || [];
    empty("chart-reviewers", reviewers.length === 0);
    if (reviewers.length) {
      chart("chart-reviewers", {
        data: { labels: reviewers.map((r) => r.reviewer_id), datasets: [
          { type: "bar", label: "Decisions", data: reviewers.map((r) => r.reviews), backgroundColor: "rgba(31,95,191,0.6)", yAxisID: "y" },
          { type: "line", label: "Override rate", data: reviewers.map((r) => r.override_rate), borderColor: COLORS.orange, yAxisID: "y1" },
        ] },
        options: { scales: { y: { min: 0 }, y1: { position: "right", min: 0, max: 1, grid: { drawOnChartArea: false } } } },
      });
    }
  }

  function renderDrift(d) {
    const box = $("drift");
    if (!d || (d.psi === null && !Object.keys(d.fields || {}).length)) return;
    box.replaceChildren();
    box.append(T.el("p", { class: d.warning ? "flash flash-error" : "flash flash-ok" },
      (d.warning ? "Drift warning: widening of automation is paused." : "No drift detected.") + (d.psi !== null && d.psi !== undefined ? " Model scores: PSI " + Number(d.psi).toFixed(2) + " (" + driftLevel(Number(d.psi)) + ")." : "")));
    const fields = Object.entries(d.fields || {}).map(([name, info]) => [name, info || {}, driftScore(info || {})]);
    fields.sort((a, b) => b[2] - a[2] || a[0].localeCompare(b[0]));
    if (fields.length) {
      const table = T.el("table", { id: "drift-fields" });
      table.append(T.el("caption", { class: "sr-only" }, "Change per field, largest first"));
      const head = T.el("tr");
      ["Field", "Change", "Outside the training range", "Values never seen in training", "Missing now (in training)"].forEach((h) => head.append(T.el("th", { scope: "col" }, h)));
      table.append(T.el("thead")); table.tHead.append(head);
      const body = T.el("tbody");
      for (const [name, info, score] of fields) {
        const level = driftLevel(score);
        const tr = T.el("tr", level === "large" ? { class: "drift-large" } : null);
        const change = T.el("td");
        change.append(T.el("span", { class: "badge " + (level === "large" ? "alarm" : level === "moderate" ? "warn" : "calm") }, level === "large" ? "large change" : level === "moderate" ? "moderate change" : "stable"));
        if (info.psi !== null && info.psi !== undefined) change.append(" PSI " + Number(info.psi).toFixed(2));
        tr.append(
          T.el("th", { scope: "row" }, name),
          change,
          T.el("td", null, info.out_of_range_rate !== undefined ? T.pct(info.out_of_range_rate, 0) : "—"),
          T.el("td", null, info.unseen_rate !== undefined ? T.pct(info.unseen_rate, 0) : "—"),
          T.el("td", null, info.missing_rate !== undefined ? T.pct(info.missing_rate, 0) + " (" + T.pct(info.missing_rate_train || 0, 0) + ")" : "—")
        );
        body.append(tr);
      }
      table.append(body);
      const wrap = T.el("div", { class: "table-wrap" }); wrap.append(table); box.append(wrap);
      box.append(T.el("p", { class: "muted" }, "Based on the latest " + (fields[0][1].n || 0) + " cases."));
    }
  }

  /* How much a field changed, on the PSI scale: PSI for numbers, the share of unseen
     categories, values outside the training range or the change in missing values. */
  function driftScore(info) {
    return Math.max(Number(info.psi) || 0, Number(info.unseen_rate) || 0, Number(info.out_of_range_rate) || 0, Math.abs(Number(info.missing_rate_change) || 0));
  }

  function driftLevel(score) {
    return score >= 0.25 ? "large" : score >= 0.1 ? "moderate" : "stable";
  }

  // A version's status, and for one that automates nothing why it was not certified (its
  // newest attempt in numbers, or why no attempt was made): docs/policy.md.
  function statusCell(m) {
    const cell = T.el("td", m.revoked ? { title: "Certification revoked: " + (m.revoked.reason || "") } : null, m.status + (m.revoked ? " · certification revoked" : ""));
    const cert = m.certification || {};
    const deferred = cert.readiness && cert.readiness.reason;
    let why = null;
    if (cert.why_not) why = "Not certified: " + cert.why_not;
    else if (deferred) why = "No attempt yet: " + deferred.replace(/^not attempted: /, "");
    if ((m.threshold === null || m.threshold === undefined) && why) {
      cell.append(T.el("div", { class: "muted why-not" }, why));
    }
    return cell;
  }

  function renderModels(models) {
    const box = $("models");
    if (!models || !models.length) return;
    box.replaceChildren();
    const table = T.el("table");
    const head = T.el("tr");
    ["Version", "Status", "Family", "Threshold", "Error bound", "Coverage", "Trained on", "Created", ""].forEach((h) => head.append(T.el("th", { scope: "col" }, h)));
    table.append(T.el("thead")); table.tHead.append(head);
    const body = T.el("tbody");
    for (const m of models) {
      const tr = T.el("tr", m.status === "active" ? { class: "active-row" } : null);
      const snap = m.training_snapshot || {};
      tr.append(
        T.el("td", null, "v" + m.version),
        statusCell(m),
        T.el("td", null, m.family || "—"),
        T.el("td", null, m.threshold !== null && m.threshold !== undefined ? m.threshold.toFixed(3) : "—"),
        T.el("td", null, m.error_bound !== null && m.error_bound !== undefined ? T.pct(m.error_bound, 2) : "—"),
        T.el("td", null, m.coverage !== null && m.coverage !== undefined ? T.pct(m.coverage, 0) : "—"),
        T.el("td", null, snap.cases !== undefined ? Number(snap.cases).toLocaleString("en") + " labels" : "—"),
        T.el("td", null, m.created_at ? new Date(m.created_at).toLocaleString() : "—")
      );
      const cell = T.el("td");
      if (cfg.admin && m.status !== "active" && (m.status === "candidate" || m.status === "retired")) {
        const btn = T.el("button", { type: "button", class: "small" }, m.status === "retired" ? "Roll back to v" + m.version : "Activate v" + m.version);
        btn.addEventListener("click", () => activate(m.version, btn));
        cell.append(btn);
      }
      tr.append(cell);
      body.append(tr);
    }
    table.append(body);
    const wrap = T.el("div", { class: "table-wrap" }); wrap.append(table); box.append(wrap);
  }

  async function activate(version, btn) {
    if (!window.confirm("Make v" + version + " the active model of " + cfg.task + "?")) return;
    btn.disabled = true;
    const resp = await T.api("POST", cfg.api.models + "/" + version + "/activate");
    let message = "Could not activate: " + T.errorText(resp);
    if (resp.ok) {
      const a = (resp.data && resp.data.automation) || {};
      showAutomation(a);
      message = "v" + version + " is now active. " + (a.state === "automating" ? "It automates at its certified threshold." : "It only suggests: automation is " + a.state + ".");
    }
    load(message);
  }

  function showAutomation(a) {
    const box = $("automation-reason");
    if (!box || !a.state) return;
    box.textContent = "Automation: " + a.state + (a.reason ? " — " + a.reason : "");
  }

  async function load(message) {
    const [stats, models] = await Promise.all([T.api("GET", cfg.api.stats), T.api("GET", cfg.api.models)]);
    const status = [];
    if (stats.ok && stats.data) {
      renderTiles(stats.data); renderCharts(stats.data); renderDrift(stats.data.drift);
    } else {
      ["chart-automation", "chart-error", "chart-queue", "chart-reviewers"].forEach((id) => empty(id, true));
      status.push(stats.status === 404 ? "Statistics are not available yet." : "Statistics: " + T.errorText(stats));
    }
    if (models.ok && models.data) renderModels(models.data.models);
    else if (models.status !== 404) status.push("Models: " + T.errorText(models));
    if (message) status.unshift(message);
    $("dash-status").textContent = status.join(" ");
  }

  load();
})();
