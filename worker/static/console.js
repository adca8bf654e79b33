// tidegate console: ask before a destructive action, and reload the page while nobody is typing.
"use strict";
document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-confirm]");
  if (button && !window.confirm(button.dataset.confirm)) {
    event.preventDefault();
  }
});
(() => {
  const seconds = Number(document.body.dataset.refresh || 0);
  if (!(seconds > 0)) {
    return;
  }
  const busy = () => {
    const active = document.activeElement;
    if (active && active.matches("input, textarea, select")) {
      return true;
    }
    return Array.from(document.querySelectorAll("form.changes input[type=text]")).some((i) => i.value !== "");
  };
  window.setInterval(() => {
    if (!busy()) {
      const url = new URL(window.location.href);
      url.searchParams.delete("did"); // the banner of the last action is shown once
      window.location.replace(url);
    }
  }, seconds * 1000);
})();
