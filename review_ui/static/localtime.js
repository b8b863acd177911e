/* Times in the reader's own time zone: <time class="local" datetime="ISO"> shows UTC text
   from the server; this replaces it with the browser's local date and time. */
"use strict";
(function () {
  const fmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  document.querySelectorAll("time.local[datetime]").forEach((node) => {
    const d = new Date(node.getAttribute("datetime"));
    if (isNaN(d)) return;
    node.title = node.textContent;
    node.textContent = fmt.format(d);
  });
})();
