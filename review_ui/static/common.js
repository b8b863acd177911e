/* Shared helpers: JSON API calls with the session's CSRF token. */
"use strict";
window.Tandem = (function () {
  const token = document.querySelector('meta[name="csrf-token"]').getAttribute("content");

  async function api(method, url, body) {
    const options = {
      method: method,
      credentials: "same-origin",
      headers: { "Accept": "application/json", "X-CSRFToken": token },
    };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const resp = await fetch(url, options);
    let data = null;
    if (resp.status !== 204) {
      try { data = await resp.json(); } catch (e) { data = null; }
    }
    if (resp.status === 401) signedOut();
    return { status: resp.status, ok: resp.ok, data: data };
  }

  const SIGNED_OUT = "You are signed out: your session ended (signed out elsewhere, " +
    "password reset or account deactivated). Nothing more can be saved until you sign in.";

  /* The session is gone (the API answers 401 to a page whose sign-in ended): say so once,
     at the top of the page, with the way back in, instead of the API's token wording. */
  function signedOut() {
    if (document.getElementById("signed-out")) return;
    const main = document.getElementById("main") || document.body;
    const note = el("p", { id: "signed-out", class: "flash flash-error", role: "alert" }, SIGNED_OUT + " ");
    const next = window.location.pathname + window.location.search;
    note.appendChild(el("a", { href: "/login?next=" + encodeURIComponent(next) }, "Sign in again"));
    main.insertBefore(note, main.firstChild);
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v !== undefined && v !== null) node.setAttribute(k, v);
      }
    }
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function config(id) {
    return JSON.parse(document.getElementById(id).textContent);
  }

  function pct(x, digits) {
    return x === null || x === undefined ? "—" : (x * 100).toFixed(digits === undefined ? 1 : digits) + "%";
  }

  function errorText(resp) {
    if (resp.status === 401) return "you are signed out — sign in again (see the top of the page)";
    if (resp.data && resp.data.error) return resp.data.error.message;
    return "Request failed (" + resp.status + ")";
  }

  return { api: api, el: el, config: config, pct: pct, errorText: errorText };
})();
