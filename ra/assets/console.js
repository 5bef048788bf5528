// meshca console: the one script. Pages work without it; with it, a page whose <main> has
// data-refresh="N" reloads its content every N seconds (the authorities page, so a running
// rotation can be watched), unless the user is in the middle of a form on it.
(function () {
  "use strict";
  var main = document.querySelector("main[data-refresh]");
  if (!main) {
    return;
  }
  var seconds = Math.max(2, parseInt(main.getAttribute("data-refresh"), 10) || 5);
  function busy() {
    var active = document.activeElement;
    return active && active !== document.body && main.contains(active) && active.form;
  }
  function refresh() {
    if (document.hidden || busy()) {
      return;
    }
    fetch(window.location.pathname, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (!response.ok || response.redirected) {
          throw new Error("status " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        var next = new DOMParser().parseFromString(html, "text/html").querySelector("main");
        if (next && !busy()) {
          main.replaceChildren.apply(main, Array.prototype.slice.call(next.childNodes));
          main.setAttribute("data-updated", new Date().toISOString());
        }
      })
      .catch(function () { /* keep what is shown; the next tick tries again */ });
  }
  window.setInterval(refresh, seconds * 1000);
})();
