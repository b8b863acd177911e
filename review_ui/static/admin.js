// Admin pages (docs/review.md, "Pages"): the copy button of a new API token.
// A static file because the pages' Content-Security-Policy allows no inline script.
(function () {
  "use strict";

  function say(text) {
    var status = document.getElementById("copy-status");
    if (status) status.textContent = text;
  }

  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    var field = document.getElementById(button.getAttribute("data-copy"));
    if (!field) return;
    button.addEventListener("click", function () {
      var done = function () {
        button.textContent = "Copied";
        button.classList.add("copied");
        say("Copied to the clipboard.");
      };
      var manual = function () {
        field.focus();
        field.select();
        say("Copying was not allowed here: the token is selected, press Ctrl+C (⌘C) to copy it.");
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(done, manual);
      } else {
        manual();
      }
    });
  });
})();
