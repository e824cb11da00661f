// A form with data-confirm asks before it is sent (removing a member, revoking a token ...).
document.addEventListener("submit", function (event) {
  var form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !form.dataset.submitted
      && !window.confirm(form.dataset.confirm)) {
    event.preventDefault(); event.stopImmediatePropagation();
  }
});
// Every POST form is sent once: a second click (or Enter) while the first submission is on its
// way is ignored, and the buttons show they are busy. The buttons are disabled after the submit
// event so the clicked button's own name and value are still sent.
document.addEventListener("submit", function (event) {
  var form = event.target;
  if (!(form instanceof HTMLFormElement) || (form.method || "").toLowerCase() !== "post") return;
  if (form.dataset.submitted) { event.preventDefault(); return; }
  form.dataset.submitted = "1";
  setTimeout(function () {
    form.querySelectorAll("button, input[type=submit]").forEach(function (b) {
      b.disabled = true; b.setAttribute("aria-busy", "true");
    });
  }, 0);
});
// Coming back with the browser's back button shows the page from cache: enable it again.
window.addEventListener("pageshow", function () {
  document.querySelectorAll("form[data-submitted]").forEach(function (form) {
    delete form.dataset.submitted;
    form.querySelectorAll("button, input[type=submit]").forEach(function (b) {
      b.disabled = false; b.removeAttribute("aria-busy");
    });
  });
});
