/**
 * The web app end to end in Debian's Chromium (headless, a Pixel 7 profile), driven by playwright-core: no browser
 * download. Reads a JSON spec (a file named as the first argument, or stdin) and prints a JSON report on stdout.
 *
 *   {
 *     "url": "http://127.0.0.1:PORT/",                      the served app (edgeprompt android-demo --serve)
 *     "requests": [{"task": "pt" | null, "text": "...", "max_new_tokens": 8, "truncate": false, "generate": false}, ...],
 *     "tokenize": ["text", ...],                              ids from the page's tokenizer (window.edgeprompt)
 *     "traces": [{"task": "px", "text": "...", "forced": [ids]}],   logits after the text, then after each forced token
 *     "offline": {"task": "pt", "text": "..."},               reload with the network blocked, then classify
 *     "installability": true,                                 Page.getInstallabilityErrors over CDP
 *     "bad": [{"name": "...", "url": "...", "deviceMemory": 0.001}],   each must show a visible error
 *     "bench": {"task": "pt", "texts": [...], "generate": {"task": null, "text": "...", "max_new_tokens": 32},
 *               "threads": [1, 4], "throttle": [1, 4], "repeat": 3}        times (benchmarks/android_demo.py)
 *   }
 *
 * Report: {"env", "results", "tokens", "traces", "offline", "installability", "bad", "bench", "console"}.
 * Classification and generation requests go through the form (select the task, type, press the button) and
 * read the result the page records in #result's data-json (full precision).
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium, devices } from "playwright-core";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const TIMEOUT = Number(process.env.E2E_TIMEOUT_MS || 120000);

const spec = JSON.parse(process.argv[2] ? readFileSync(process.argv[2], "utf8") : readFileSync(0, "utf8"));
const report = { env: null, results: [], tokens: [], traces: [], offline: null, installability: null, bad: [], bench: null, console: [] };

function watch(page, tag) {
  page.on("console", (m) => (m.type() === "error" || m.type() === "warning") && report.console.push(`${tag} ${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => report.console.push(`${tag} pageerror: ${e.message}`));
}

/** Waits until the page is ready or shows its error; returns the state and the error's text. */
async function settle(page) {
  await page.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.state), null, { timeout: TIMEOUT });
  const state = await page.evaluate(() => document.body.dataset.state);
  const error = (await page.locator("#error").isVisible()) ? await page.locator("#error").innerText() : null;
  return { state, error };
}

/**
 * One request through the form: pick the task, type the text, press the button, read #result's data-json.
 * {"generate": true} generates under a classification task, which the form does not offer: through window.edgeprompt.
 */
async function viaForm(page, req) {
  if (req.generate) {
    return page.evaluate(
      (r) => window.edgeprompt.generate(r.task, r.text, { maxNewTokens: r.max_new_tokens ?? 16 }).catch((e) => ({ error: e.message, kind: e.kind })),
      req,
    );
  }
  const before = Number((await page.evaluate(() => document.body.dataset.runs)) || 0);
  await page.selectOption("#task", req.task ?? "");
  await page.fill("#text", req.text);
  if (await page.locator("#max-tokens").isVisible()) await page.fill("#max-tokens", String(req.max_new_tokens ?? 16));
  await page.setChecked("#truncate", !!req.truncate);
  await page.click("#run");
  await page.waitForFunction((n) => Number(document.body.dataset.runs || 0) > n, before, { timeout: TIMEOUT });
  const out = JSON.parse(await page.locator("#result").getAttribute("data-json"));
  if (out.error) out.error_visible = await page.locator("#error").isVisible();
  else if (out.tokens) out.streamed = await page.locator("#output").innerText();
  return out;
}

async function openApp(context, url, tag) {
  const page = await context.newPage();
  watch(page, tag);
  await page.goto(url);
  return page;
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : null;
}

/** Runs the bench texts in the page: a cold classification (the task's prefix computed), warm ones, then greedy generation. */
async function benchRuns(page, b) {
  return page.evaluate(async (b) => {
    const ep = window.edgeprompt;
    const info = await ep.ready;
    const cold = await ep.classify(b.task, b.texts[0]);
    const warm = [];
    const outputs = [];
    for (let i = 0; i < (b.repeat ?? 3); i++) {
      for (const t of b.texts) {
        const s = performance.now();
        const r = await ep.classify(b.task, t);
        warm.push(performance.now() - s);
        if (i === 0) outputs.push({ label: r.label, probabilities: r.probabilities });
      }
    }
    let gen = null;
    if (b.generate) {
      const s = performance.now();
      const g = await ep.generate(b.generate.task ?? null, b.generate.text, { maxNewTokens: b.generate.max_new_tokens ?? 32 });
      gen = { wall_ms: performance.now() - s, prefill_ms: g.timings.prefill_ms, per_token_ms: g.timings.per_token_ms, tokens: g.tokens, prompt_tokens: g.ids.length };
    }
    return { info: ep.info(), cold_prefix_ms: cold.timings.prefix_ms, cold_prefill_ms: cold.timings.prefill_ms, warm_ms: warm, outputs, gen };
  }, b);
}

/**
 * Load and request times for each thread count and CPU throttling rate (Emulation.setCPUThrottlingRate). A first
 * visit lets the service worker cache and check the bundle (its time is reported apart); each row then loads the
 * installed app in a new page.
 */
async function bench(context, b) {
  const base = b.url ?? spec.url;
  const first = await context.newPage();
  watch(first, "bench first visit");
  let t0 = Date.now();
  await first.goto(base);
  const st0 = await settle(first);
  const out = { first_visit: { ...st0, page_to_ready_ms: Date.now() - t0, load_ms: st0.state === "ready" ? (await first.evaluate(() => window.edgeprompt.info())).load : null }, rows: [] };
  await first.close();
  for (const threads of b.threads ?? [1]) {
    for (const rate of b.throttle ?? [1]) {
      const url = new URL(base);
      url.searchParams.set("threads", String(threads));
      const page = await context.newPage();
      watch(page, `bench t${threads} x${rate}`);
      const cdp = await context.newCDPSession(page);
      await cdp.send("Emulation.setCPUThrottlingRate", { rate });
      t0 = Date.now();
      await page.goto(url.href);
      const st = await settle(page);
      const row = { asked_threads: threads, throttle: rate, page_to_ready_ms: Date.now() - t0 };
      if (st.state === "ready") {
        const r = await benchRuns(page, b);
        const pt = r.gen?.per_token_ms ?? [];
        Object.assign(row, {
          threads: r.info.threads,
          crossOriginIsolated: r.info.crossOriginIsolated,
          load_ms: r.info.load,
          classify_cold_prefix_ms: r.cold_prefix_ms,
          classify_cold_prefill_ms: r.cold_prefill_ms,
          classify_warm_median_ms: median(r.warm_ms),
          classify_warm_ms: r.warm_ms,
          outputs: r.outputs,
          generate: r.gen && { ...r.gen, per_token_median_ms: median(pt) },
          js_heap_bytes: r.info.jsHeap,
          memory: r.info.memory,
        });
      } else row.error = st.error;
      out.rows.push(row);
      await page.close();
    }
  }
  return out;
}

const profile = mkdtempSync(join(tmpdir(), "edgeprompt-e2e-"));
// a persistent profile: Chromium reports an incognito (non-persistent) context as not installable
const context = await chromium.launchPersistentContext(profile, {
  ...devices["Pixel 7"],
  executablePath: CHROMIUM,
  headless: true,
  // a closed network: no background connections, no component updates (each would be refused, many at a time)
  args: ["--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"],
});
try {
  if (spec.url) {
    const page = await openApp(context, spec.url, "main");
    const st = await settle(page);
    report.env = { ...st, ...(st.state === "ready" ? await page.evaluate(() => window.edgeprompt.info()) : {}) };
    if (st.state === "ready") {
      for (const req of spec.requests ?? []) report.results.push(await viaForm(page, req));
      report.tokens = await page.evaluate((texts) => texts.map((t) => window.edgeprompt.tokenize(t)), spec.tokenize ?? []);
      report.traces = await page.evaluate(async (ts) => {
        const out = [];
        for (const t of ts) out.push(await window.edgeprompt.logitsTrace(t.task, t.text, t.forced));
        return out;
      }, spec.traces ?? []);
      if (spec.installability) {
        const cdp = await context.newCDPSession(page);
        const ie = await cdp.send("Page.getInstallabilityErrors");
        const man = await cdp.send("Page.getAppManifest");
        report.installability = { errors: ie.installabilityErrors, manifest_errors: man.errors, manifest_url: man.url };
      }
      if (spec.offline) {
        const controlled = await page.evaluate(() => !!navigator.serviceWorker.controller);
        await context.setOffline(true);
        await page.reload();
        const st2 = await settle(page);
        const res = st2.state === "ready" ? await viaForm(page, spec.offline) : null;
        report.offline = { controlled_before: controlled, ...st2, info: st2.state === "ready" ? await page.evaluate(() => window.edgeprompt.info()) : null, result: res };
        await context.setOffline(false);
      }
    }
    await page.close();
  }
  for (const bad of spec.bad ?? []) {
    const init = bad.deviceMemory ? { fn: (gb) => Object.defineProperty(Navigator.prototype, "deviceMemory", { get: () => gb, configurable: true }), arg: bad.deviceMemory } : null;
    const page = await context.newPage();
    watch(page, `bad:${bad.name}`);
    const requests = [];
    page.on("request", (r) => requests.push(r.url()));
    if (init) await page.addInitScript(init.fn, init.arg);
    await page.goto(bad.url);
    let st;
    try {
      await page.locator("#error").waitFor({ state: "visible", timeout: TIMEOUT });
      st = await settle(page);
    } catch (e) {
      st = { state: await page.evaluate(() => document.body.dataset.state), error: null, timeout: e.message };
    }
    const kind = await page.locator("#error").getAttribute("data-kind");
    const bodyText = (await page.locator("body").innerText()).trim();
    report.bad.push({ name: bad.name, ...st, kind, body_chars: bodyText.length, requests });
    await page.close();
  }
  if (spec.bench) report.bench = await bench(context, spec.bench);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(report) + "\n");
