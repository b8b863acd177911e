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
    return { status: resp.status, ok: resp.ok, data: data };
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
    if (resp.data && resp.data.error) return resp.data.error.message;
    return "Request failed (" + resp.status + ")";
  }

  return { api: api, el: el, config: config, pct: pct, errorText: errorText };
})();
