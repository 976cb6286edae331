// Grove console: swaps each live part for the fragment its stream (server-sent events) sends.
// The server renders everything; this only keeps pages current. No framework, no build step.
"use strict";
for (const part of document.querySelectorAll("[data-stream]")) {
  const status = document.createElement("p");
  status.className = "stream";
  status.setAttribute("role", "status");
  part.before(status);
  const events = new EventSource(part.dataset.stream);
  // A page left for another stays in the back-forward cache with its stream open, holding one of
  // the browser's few connections to the console (six in Chromium): close it when the page is
  // hidden, and load the page afresh if it is shown again from the cache.
  addEventListener("pagehide", () => events.close());
  addEventListener("pageshow", (e) => { if (e.persisted) location.reload(); });
  events.onopen = () => { status.textContent = "Live"; status.dataset.state = "live"; };
  events.onerror = () => {
    status.textContent = "Reconnecting…";
    status.dataset.state = "lost";
  };
  events.onmessage = (e) => {
    // Keep keyboard focus on the same control across the swap.
    const focused = document.activeElement && part.contains(document.activeElement)
      ? document.activeElement.getAttribute("aria-label") : null;
    part.innerHTML = e.data;
    if (focused) {
      const again = [...part.querySelectorAll("[aria-label]")]
        .find((el) => el.getAttribute("aria-label") === focused);
      if (again) again.focus();
    }
  };
}
