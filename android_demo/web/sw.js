/**
 * The service worker: the app works offline and is installable.
 *
 * On install it caches the app's files and the bundle's, each bundle file checked against its sha256 in the
 * manifest with Web Crypto first (a file that does not match is not cached: the page then fetches it and says
 * which file is damaged). It serves everything from that cache (network for what is not in it), adding
 * Cross-Origin-Opener-Policy and Cross-Origin-Embedder-Policy to every response, so the page stays cross-origin
 * isolated (onnxruntime-web's threads) even when the cache, not the server, answers.
 *
 * The build id below is written by `edgeprompt android-demo`: a rebuilt app is a new worker with a new cache.
 */
const BUILD_ID = "__EDGEPROMPT_BUILD_ID__";
const PREFIX = `edgeprompt-demo:${self.registration.scope}:`;
const CACHE = PREFIX + BUILD_ID;
const VERIFIED_HEADER = "x-edgeprompt-sha256";
const ISOLATION = { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp" };

async function sha256Hex(buffer) {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", buffer));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function tell(msg) {
  for (const c of await self.clients.matchAll({ includeUncontrolled: true, type: "window" })) c.postMessage(msg);
}

async function fetchFresh(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r;
}

async function precache() {
  const cfg = await (await fetchFresh("app-config.json")).json();
  const cache = await caches.open(CACHE);
  for (const f of ["./", "app-config.json", ...cfg.app_files]) await cache.put(f, await fetchFresh(f));
  const files = [["manifest.json", cfg.bundle.manifest], ...Object.entries(cfg.bundle.files)];
  const damaged = [];
  let done = 0;
  for (const [rel, rec] of files) {
    const url = cfg.bundle.dir + rel;
    const r = await fetchFresh(url);
    const buf = await r.arrayBuffer();
    const ok = buf.byteLength === rec.bytes && (await sha256Hex(buf)) === rec.sha256;
    if (ok) {
      const headers = new Headers(r.headers);
      headers.set(VERIFIED_HEADER, rec.sha256);
      await cache.put(url, new Response(buf, { status: 200, headers }));
    } else damaged.push(rel);
    done += rec.bytes;
    await tell({ type: "progress", file: rel, done, ok });
  }
  await tell({ type: "cached", build: BUILD_ID, damaged });
}

self.addEventListener("install", (event) => {
  event.waitUntil(precache().then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    (async () => {
      for (const k of await caches.keys()) if (k.startsWith(PREFIX) && k !== CACHE) await caches.delete(k);
      await self.clients.claim();
    })(),
  );
});

function isolated(r) {
  if (r.type === "opaque" || r.status === 0) return r;
  const headers = new Headers(r.headers);
  for (const [k, v] of Object.entries(ISOLATION)) headers.set(k, v);
  return new Response(r.body, { status: r.status, statusText: r.statusText, headers });
}

self.addEventListener("fetch", (event) => {
  const req = event.request;
  if (req.method !== "GET" || new URL(req.url).origin !== self.location.origin) return;
  event.respondWith(
    (async () => {
      const cache = await caches.open(CACHE);
      // a page opened with ?task=... is the cached index.html
      const hit = await cache.match(req, { ignoreSearch: req.mode === "navigate" });
      if (hit) return isolated(hit);
      try {
        return isolated(await fetch(req));
      } catch (e) {
        return new Response(`offline, and ${new URL(req.url).pathname} is not in the app's cache`, { status: 503, headers: { "content-type": "text/plain", ...ISOLATION } });
      }
    })(),
  );
});
