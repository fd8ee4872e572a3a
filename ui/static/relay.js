// relay's own small behaviours, shared by every page. No inline scripts are
// allowed (Content-Security-Policy: script-src 'self'), so pages ask for these
// with data-* attributes:
//
//   <button type="button" data-copy="TEXT">Copy</button>
//       copies TEXT to the clipboard and says "Copied" on the button for a moment.
//   <form data-confirm="QUESTION"> / <button data-confirm="QUESTION">
//       asks QUESTION before the form is sent; "Cancel" sends nothing.
//
// Listeners sit on the document, so content swapped in by htmx works too.
(function () {
  "use strict";

  function fallbackCopy(text) {
    // Without a secure context (plain http on another machine), navigator.clipboard
    // is missing: copy through a hidden, selected text area instead.
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(area);
    return ok;
  }

  function copied(button, ok) {
    if (!button.dataset.label) { button.dataset.label = button.textContent; }
    button.textContent = ok ? "Copied" : "Select and copy it by hand";
    window.clearTimeout(button._relayTimer);
    button._relayTimer = window.setTimeout(function () {
      button.textContent = button.dataset.label;
    }, 2000);
  }

  function copy(button) {
    var text = button.getAttribute("data-copy");
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(
        function () { copied(button, true); },
        function () { copied(button, fallbackCopy(text)); });
    } else {
      copied(button, fallbackCopy(text));
    }
  }

  document.addEventListener("click", function (event) {
    var target = event.target instanceof Element ? event.target : null;
    if (!target) { return; }
    var button = target.closest("[data-copy]");
    if (button) {
      event.preventDefault();
      copy(button);
      return;
    }
    var asking = target.closest("button[data-confirm], input[type=submit][data-confirm]");
    if (asking && !window.confirm(asking.getAttribute("data-confirm"))) {
      event.preventDefault();
      event.stopPropagation();
    }
  }, true);

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form instanceof HTMLFormElement && form.hasAttribute("data-confirm")
        && !window.confirm(form.getAttribute("data-confirm"))) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);
})();
