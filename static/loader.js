/*
 * replay-middleware browser loader (SPEC N3). Hand-written ES2017, no dependencies, no build.
 *
 * The server injects, in the page head, a JSON data block
 * (<script type="application/json" id="replay-middleware-config">) and this file as an async
 * script with the page's CSP nonce. This file: resolves the visitor's ids (inline, or from
 * GET session.url when the cookie or the clock says the inline ones are out of date), loads the
 * Amplitude Session Replay SDK with the nonce and SRI, calls sessionReplay.init(), shuts the SDK
 * down and starts it again as client-side navigation enters and leaves excluded routes, and
 * exposes window.replayMiddleware.
 *
 * Nothing here may break the page: every entry point is wrapped, failures are logged with
 * console.warn("[replay-middleware] ...") and the page carries on without a recorder.
 * No eval, no innerHTML, no inline handlers; the only Trusted Types sink is script.src, used
 * only when the server did not already place the SDK tag itself (sdk.static).
 */
(() => {
  "use strict";
  const w = window;
  const d = document;
  // currentScript is only set while this file runs synchronously; read the nonce now.
  const me = d.currentScript;
  const nonce = (me && me.nonce) || "";

  const warn = (msg, err) => {
    try {
      if (err === undefined) console.warn("[replay-middleware] " + msg);
      else console.warn("[replay-middleware] " + msg, err);
    } catch (e) { /* no console: stay silent */ }
  };
  // For callbacks the page or the browser calls: nothing thrown here may reach the page.
  const safe = (fn) => (...args) => {
    try { return fn(...args); } catch (e) { warn("unexpected error", e); }
  };
  // Absolute URL for a server path. The SDK uploads from a blob: worker, where a relative URL
  // cannot be resolved and every batch is silently dropped (PROTOCOL §1.7); resolving against
  // location (not the document base) also sidesteps a page's <base href>.
  const abs = (path) => new URL(path, location.href).href;

  const cookie = (name) => {
    try {
      for (const part of d.cookie.split(";")) {
        const i = part.indexOf("=");
        if (i > 0 && part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
      }
    } catch (e) { /* sandboxed document: no cookie access */ }
    return null;
  };

  const start = (cfg) => {
    const sess = cfg.session;
    let ids = cfg.ids; // {deviceId, sessionId, lastActivity}, or null until resolved
    let record = cfg.record; // the server's decision for this session; null = not known yet
    let optedOut = cookie(cfg.optOutCookie) !== null;
    let sr = null; // the SDK global, once loaded and initialised
    let sdk = null; // promise of the SDK global; loaded at most once per page
    let want = false; // the state last acted on: true = init() called, false = not or shut down
    let live = false; // init() called and not undone by shutdown()
    let gen = 0; // bumped on every change of `want`, so a late SDK load cannot act on an old one
    let pending = null; // the in-flight GET session.url, shared by everyone who needs it

    // The identity cookie is "<deviceId>.<sessionId>.<lastActivityMs>.<signature>". Python's
    // cookie writer may double-quote it and some stacks URL-encode it. The signature is the
    // server's business; anything else that does not parse counts as no cookie.
    const cookieIds = () => {
      let v = cookie(sess.cookie);
      if (!v) return null;
      try { v = decodeURIComponent(v); } catch (e) { return null; }
      const f = v.replace(/^"|"$/g, "").split(".");
      if (f.length < 4 || !f[0] || !/^[1-9]\d{0,15}$/.test(f[1]) || !/^\d{1,16}$/.test(f[2])) return null;
      return { deviceId: f[0], sessionId: +f[1], lastActivity: +f[2] };
    };

    // Are the ids we hold out of date? True when unknown, when the cookie holds a newer
    // identity (another tab rolled the session, or bfcache / a 304 served an older page), or
    // when the last activity we know of is older than the session timeout. Activity slides
    // server-side on every upload, so the cookie's value wins when it is for our session.
    const stale = () => {
      if (!ids || typeof record !== "boolean") return true;
      const c = cookieIds();
      if (c && (c.deviceId !== ids.deviceId || c.sessionId > ids.sessionId)) return true;
      const last = c && c.sessionId === ids.sessionId ? Math.max(c.lastActivity, ids.lastActivity) : ids.lastActivity;
      return Date.now() - last > sess.timeoutMs;
    };

    // Route rules come from the server as regex sources; one that does not compile here
    // (engine differences) is ignored rather than breaking every other rule.
    let warned = false;
    const compile = (rules) => rules && rules.map((r) => {
      try {
        // g and y would make test() stateful (lastIndex) and alternate its answers.
        return new RegExp(r.source, (r.flags || "").replace(/[gy]/g, ""));
      } catch (e) {
        if (!warned) warn("ignoring a route rule that does not compile: " + r.source, e);
        warned = true;
        return null;
      }
    }).filter(Boolean);
    const routes = cfg.routes || {};
    const exclude = compile(routes.exclude) || [];
    const include = compile(routes.include); // null: no allow-list
    const routeOk = () => {
      const raw = location.pathname;
      let path = raw;
      // The server matches the decoded path; location has it percent-encoded. Try both so an
      // exclusion is never dodged by encoding. Repeated slashes collapse, as on the server.
      try { path = decodeURIComponent(raw); } catch (e) { /* keep the raw path */ }
      const paths = [raw, path].map((p) => p.replace(/\/{2,}/g, "/"));
      const hit = (res) => res.some((re) => paths.some((p) => re.test(p)));
      return !hit(exclude) && (!include || hit(include));
    };

    const loadSdk = () => sdk || (sdk = new Promise((resolve, reject) => {
      const done = () => (w.sessionReplay ? resolve(w.sessionReplay) : reject(new Error("no sessionReplay global")));
      if (w.sessionReplay) return done();
      let tag;
      if (cfg.sdk.static) {
        // Trusted Types pages: the server put the tag in the markup (parser-inserted HTML is
        // no sink). It may have run already (checked above) or not yet.
        tag = d.getElementById("replay-middleware-sdk");
        if (!tag) return reject(new Error("SDK tag missing"));
        // Async scripts hold back window 'load': if the tag failed before we listened, 'load'
        // (or readyState complete) is where we find out instead of waiting forever.
        if (d.readyState === "complete") return done();
        w.addEventListener("load", done);
      } else {
        tag = d.createElement("script");
        tag.async = true;
        tag.id = "replay-middleware-sdk";
        // A nonce-only script-src needs it; under 'strict-dynamic' the tag is trusted anyway
        // (created by a trusted script), and the nonce costs nothing.
        if (nonce) tag.nonce = nonce;
        if (cfg.sdk.integrity) tag.integrity = cfg.sdk.integrity;
        tag.crossOrigin = "anonymous"; // SRI on a cross-origin (CDN) script needs a CORS fetch
        tag.src = abs(cfg.sdk.url);
        (d.head || d.documentElement).appendChild(tag);
      }
      tag.addEventListener("load", done);
      tag.addEventListener("error", () => reject(new Error("SDK failed to load")));
    }));

    const options = () => {
      const o = Object.assign({}, cfg.options, { deviceId: ids.deviceId, sessionId: ids.sessionId });
      if (cfg.endpoints) { // null in direct mode: the SDK picks Amplitude's hosts by serverZone
        o.trackServerUrl = abs(cfg.endpoints.track);
        o.configServerUrl = abs(cfg.endpoints.config);
      }
      return o;
    };

    // Bring the SDK to the state the page calls for. Acts only on a change, so init() and
    // shutdown() are never called twice in a row, whatever mix of events got us here.
    const apply = () => {
      const on = record === true && !optedOut && routeOk();
      if (on === want) return;
      want = on;
      const g = ++gen;
      if (on) {
        loadSdk().then((s) => {
          if (g !== gen) return; // left the allowed route (or opted out) while loading
          sr = s;
          live = true;
          const r = s.init(cfg.apiKey, options());
          if (r && r.promise) r.promise.catch((e) => warn("init failed", e));
        }).catch((e) => warn("could not start the recorder", e));
      } else if (live) {
        live = false;
        sr.shutdown(); // sends what is buffered, removes the SDK's listeners (PROTOCOL §9)
      }
    };
    const sync = safe(apply);

    // GET session.url: the server's current ids and decision (it rolls a timed-out session
    // and sets the cookie). On failure keep what we have (inline ids, if any).
    const refresh = () => pending || (pending = fetch(abs(sess.url), { credentials: "same-origin", cache: "no-store" })
      .then((res) => {
        if (!res.ok) throw new Error("HTTP " + res.status);
        return res.json();
      })
      .then((a) => {
        if (!a || typeof a.deviceId !== "string" || !a.deviceId || !(a.sessionId > 0)) throw new Error("unexpected answer");
        const moved = !ids || a.deviceId !== ids.deviceId || a.sessionId !== ids.sessionId;
        ids = { deviceId: a.deviceId, sessionId: a.sessionId, lastActivity: +a.lastActivity || Date.now() };
        record = a.record === true;
        // A running recorder moves to the new session in place; a stopped one picks the new ids
        // up at its next init().
        if (moved && live && record) sr.setSessionId(ids.sessionId, ids.deviceId);
      })
      .catch((e) => warn("session lookup failed", e))
      .then(() => {
        pending = null;
        sync();
      }));

    // Any navigation is a cue to re-check the path against the rules.
    for (const name of ["pushState", "replaceState"]) {
      const orig = history[name];
      if (typeof orig !== "function") continue;
      history[name] = function () {
        const r = orig.apply(this, arguments); // the app's own errors still reach the app
        sync();
        return r;
      };
    }
    w.addEventListener("popstate", sync);
    w.addEventListener("hashchange", sync);

    // Coming back to a tab, or out of the bfcache, possibly after the session timed out.
    const onReturn = safe(() => {
      if (!optedOut && d.visibilityState !== "hidden" && stale()) refresh();
    });
    d.addEventListener("visibilitychange", onReturn);
    w.addEventListener("pageshow", (e) => { if (e.persisted) onReturn(); });

    const api = {
      version: cfg.v, // the data-block contract this loader implements
      getSessionReplayProperties: () => {
        try { return (live && sr.getSessionReplayProperties()) || {}; } catch (e) { return {}; }
      },
      getSessionId: () => (ids ? ids.sessionId : undefined),
      optOut: safe(() => {
        d.cookie = cfg.optOutCookie + "=1; Path=/; Max-Age=31536000; SameSite=Lax";
        optedOut = true;
        sync();
      }),
      optIn: safe(() => {
        d.cookie = cfg.optOutCookie + "=; Path=/; Max-Age=0; SameSite=Lax";
        optedOut = false;
        // An opted-out page may never have resolved ids, and the server's record:false may
        // have been the opt-out itself: ask again.
        if (stale() || record !== true) refresh();
        else sync();
      }),
    };
    w.replayMiddleware = Object.freeze(api);

    if (optedOut) return; // nothing to resolve until optIn()
    if (stale()) refresh();
    else sync();
  };

  try {
    // Double start (a second copy of this file or of the snippet): the first one owns the page.
    if (w.replayMiddleware) return;
    const block = d.getElementById("replay-middleware-config");
    const cfg = block && JSON.parse(block.textContent);
    if (!cfg || cfg.v !== 1) return warn("no usable config block");
    start(cfg);
  } catch (e) {
    warn("failed to start", e);
  }
})();
