// Admin pages (docs/review.md, "Pages"): the tasks of a person's account, and the copy
// button of a new API token.
// A static file because the pages' Content-Security-Policy allows no inline script.
(function () {
  "use strict";

  // A person's tasks: names typed, or "Every task" ticked, never both (the server refuses
  // both, and an empty field with the box unticked): each undoes the other as it is used.
  var everyTask = document.getElementById("all_tasks");
  var taskNames = document.getElementById("task_scope");
  if (everyTask && taskNames) {
    taskNames.addEventListener("input", function () {
      if (taskNames.value.trim() !== "") everyTask.checked = false;
    });
    everyTask.addEventListener("change", function () {
      if (everyTask.checked) taskNames.value = "";
    });
  }

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
