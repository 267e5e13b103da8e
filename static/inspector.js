/*
 * replay-middleware inspector (SPEC L2): the script of the local-mode inspector pages.
 * Served from {prefix}/inspect/static/inspector.js under the pages' own strict CSP (no inline
 * script, no eval). Hand-written ES2017, no build.
 *
 * - Every <time data-ms> is rewritten in the viewer's local time zone (the server writes UTC).
 * - On a session page, #player[data-events-url] is filled with rrweb-player (the vendored UMD
 *   bundle, global `rrwebPlayer`) replaying the events fetched from that URL, with every
 *   `autofocus` attribute taken out first (see stripAutofocus).
 * - The page list's button.seek[data-seek-ms] (an event timestamp) replays from that moment.
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

  /*
   * The player rebuilds the recording in an iframe sandboxed without allow-scripts, where an
   * element inserted with `autofocus` makes chromium log "Blocked autofocusing on a <input>
   * element ..." (once per rebuild: every seek). rrweb-player 2.0.0-alpha.20 has no option
   * for it (the sandbox is fixed, plugins' onBuild runs after insertion for mutations), so the
   * attribute is removed from the events: the full snapshots' node trees, the nodes mutations
   * add, and attribute mutations. A replay must never move focus anyway; nothing else changes.
   */
  const isAutofocus = (name) => name.toLowerCase() === "autofocus";
  const stripAttributes = (attributes) => {
    if (!attributes || typeof attributes !== "object") return;
    for (const name of Object.keys(attributes)) {
      if (isAutofocus(name)) delete attributes[name];
    }
  };
  const stripTree = (node) => {
    const stack = [node];
    while (stack.length) {
      const n = stack.pop();
      if (!n || typeof n !== "object") continue;
      stripAttributes(n.attributes);
      if (Array.isArray(n.childNodes)) stack.push(...n.childNodes);
    }
  };
  const stripAutofocus = (events) => {
    for (const e of events) {
      const data = e && e.data;
      if (!data || typeof data !== "object") continue;
      if (e.type === 2) {  // FullSnapshot
        stripTree(data.node);
      } else if (e.type === 3 && data.source === 0) {  // IncrementalSnapshot, Mutation
        for (const add of Array.isArray(data.adds) ? data.adds : []) stripTree(add && add.node);
        for (const change of Array.isArray(data.attributes) ? data.attributes : []) {
          stripAttributes(change && change.attributes);
        }
      }
    }
    return events;
  };

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
      stripAutofocus(events);
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
      say(events.length + " events, a replay of " +
          Math.round((events[events.length - 1].timestamp - events[0].timestamp) / 1000) +
          " s. Press play to watch it, or replay a page from the list below.");
      // The player's clock starts at the first event; a page's button holds its timestamp.
      const first = events[0].timestamp;
      for (const button of d.querySelectorAll("button.seek[data-seek-ms]")) {
        const at = Number(button.getAttribute("data-seek-ms"));
        if (!Number.isFinite(at)) continue;
        button.disabled = false;
        button.addEventListener("click", () => {
          player.goto(Math.max(0, at - first), true);
          root.scrollIntoView({ block: "nearest" });
        });
      }
    })
    .catch((err) => fail("Could not load the events: " + (err && err.message ? err.message : err)));
})();
