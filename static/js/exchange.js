// Forms marked data-once send once: after the browser has read the form, the button that sent
// it is disabled, so a second click or Enter cannot post it again (the server answers with a
// redirect, so a reload does not either). htmx requests use hx-disabled-elt instead.
document.addEventListener("submit", function (event) {
  var form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-once")) return;
  if (form.dataset.sending) { event.preventDefault(); return; }
  form.dataset.sending = "1";
  var button = event.submitter;
  setTimeout(function () {
    if (button) { button.disabled = true; button.setAttribute("aria-busy", "true"); }
  }, 0);
});
// Coming back through the history cache shows the page as it was left: let it be sent again.
window.addEventListener("pageshow", function () {
  document.querySelectorAll("form[data-once]").forEach(function (form) {
    delete form.dataset.sending;
    form.querySelectorAll("[aria-busy]").forEach(function (b) { b.disabled = false; b.removeAttribute("aria-busy"); });
  });
});
