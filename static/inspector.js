/*
 * replay-middleware inspector (SPEC L2): the script of the local-mode inspector pages.
 * Served from {prefix}/inspect/static/inspector.js under the pages' own strict CSP (no inline
 * script, no eval). Hand-written ES2017, no build.
 *
 * - Every <time data-ms> is rewritten in the viewer's local time zone (the server writes UTC).
 * - On a session page, #player[data-events-url] is filled with rrweb-player (the vendored UMD
 *   bundle, global `rrwebPlayer`) replaying the events fetched from that URL.
 *   window.__replayInspector exposes {player, events} (or {error}) for tests and debugging.
 */
(() => {
  "use strict";
  const d = document;

  for (const el of d.querySelectorAll("time[data-ms]")) {
    const ms = Number(el.getAttribute("data-ms"));
    if (Number.isFinite(ms)) {
      el.setAttribute("datetime", new Date(ms).toISOString());
      el.textContent = new Date(ms).toLocaleString();
    }
  }

  const root = d.getElementById("player");
  const status = d.getElementById("player-status");
  if (!root) return;
  const say = (text) => { if (status) status.textContent = text; };
  const fail = (text) => {
    window.__replayInspector = { error: text };
    say(text);
    if (status) status.className = "status error";
  };

  const Player = window.rrwebPlayer && (window.rrwebPlayer.default || window.rrwebPlayer.Player);
  if (typeof Player !== "function") {
    fail("The replay player did not load: run make setup, then reload this page.");
    return;
  }

  fetch(root.getAttribute("data-events-url"), { credentials: "same-origin", cache: "no-store" })
    .then((response) => {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.json();
    })
    .then((events) => {
      if (!Array.isArray(events) || !events.some((e) => e && e.type === 2)) {
        fail("Nothing to replay yet: no full snapshot of the page was uploaded in this session " +
             "(the recorder sends it with its first batch, or when the page is left).");
        return;
      }
      if (!events.some((e) => e && e.type === 4)) {
        fail("Nothing to replay: the session has no Meta event (page size), which rrweb needs.");
        return;
      }
      const width = Math.max(320, Math.min(root.clientWidth || 1024, 1600));
      const player = new Player({
        target: root,
        props: {
          events,
          width,
          height: Math.round((width * 9) / 16),
          autoPlay: false,
          showWarning: false,
          mouseTail: false,
        },
      });
      window.__replayInspector = { player, events };
      say(events.length + " events, " +
          Math.round((events[events.length - 1].timestamp - events[0].timestamp) / 1000) +
          " s. Press play to watch the replay.");
    })
    .catch((err) => fail("Could not load the events: " + (err && err.message ? err.message : err)));
})();
