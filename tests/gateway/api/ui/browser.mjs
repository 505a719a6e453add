// Drives the web UI in headless Chromium (Playwright) for tests/gateway/api/test_ui.py: one browser,
// one fresh context per tenant. Reads a JSON config from argv[2], writes what it saw as JSON to
// argv[3]; a wait that times out fails with the page's state in the message (and a screenshot).
import { createRequire } from "node:module";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readFileSync } from "node:fs";

const cfg = JSON.parse(readFileSync(process.argv[2], "utf8"));
const require = createRequire(join(cfg.playwright_dir, "node_modules", "x.js"));
const { chromium } = require("playwright-core");
const out = { console_errors: [] };
const WAIT = { timeout: cfg.timeout_ms };

const browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "ui-chromium-")), {
  executablePath: cfg.chromium, headless: true, acceptDownloads: true, viewport: { width: 1280, height: 900 },
  args: ["--no-sandbox", "--disable-background-networking", "--autoplay-policy=no-user-gesture-required",
    "--disable-gpu", "--mute-audio"],
});

// Every text the progress line shows and every chunks_done it is given, recorded as it changes.
const recordProgress = () => {
  window.__seen = [];
  new MutationObserver(() => {
    const p = document.getElementById("progress");
    if (!p) return;  // the page is still being parsed
    window.__seen.push({ text: document.getElementById("progress-text").textContent, value: Number(p.value),
      chunks: p.dataset.chunksDone === undefined ? null : Number(p.dataset.chunksDone) });
  }).observe(document, { subtree: true, childList: true, characterData: true, attributes: true,
    attributeFilter: ["value", "data-chunks-done"] });
};

async function page(key) {
  const p = await browser.newPage();
  p.on("console", (m) => m.type() === "error" && out.console_errors.push(m.text()));
  p.on("pageerror", (e) => out.console_errors.push(String(e)));
  await p.addInitScript(recordProgress);
  await p.goto(`${cfg.url}/ui`);
  if (key) {
    await p.getByLabel("API key").fill(key);
    await p.getByRole("button", { name: "Sign in" }).click();
    await p.locator("#signin-status", { hasText: "Signed in" }).waitFor(WAIT);
  }
  await p.locator("#stems input").first().waitFor(WAIT);
  return p;
}

async function jobsShown(p) {
  await p.locator("#tab-jobs").click();
  await p.locator("#jobs-status", { hasText: /job/ }).waitFor(WAIT);
  return p.$$eval("#jobs-table tbody tr", (rows) => rows.map((r) => r.dataset.job));
}

async function refusal(p, file) {
  await p.locator("#tab-separate").click();
  await p.setInputFiles("#file", file);
  await p.locator("#submit").click();
  await p.locator("#message:not([hidden])").waitFor(WAIT);
  return p.locator("#message").textContent();
}

async function shot(p, name, width, height) {
  await p.setViewportSize({ width, height });
  await p.waitForTimeout(150);  // one layout pass for the canvases after the resize
  await p.screenshot({ path: join(cfg.screenshots, name), fullPage: true });
}

let current = null;
try {
  // --- tenant A: separate a track, follow it, play it, download it
  const a = current = await page(cfg.key_a);
  out.stems_offered = await a.$$eval("#stems input", (xs) => xs.map((x) => x.value));
  await a.selectOption("#model", cfg.model);
  await a.setInputFiles("#file", cfg.track);
  await a.locator("#submit").click();
  await a.locator("#result .stem").nth(3).waitFor(WAIT);
  out.progress_seen = await a.evaluate(() => window.__seen);
  out.facts = await a.locator("#result .facts").innerText();
  await a.locator("#result [data-role=play]").click();
  await a.waitForFunction(() => [...document.querySelectorAll("#result audio")]
    .every((x) => !x.paused && x.currentTime > 0.3), null, WAIT);
  out.players = await a.$$eval("#result audio", (xs) => xs.map((x) => ({
    stem: x.dataset.stem, playing: !x.paused && !x.ended && x.readyState > 2, duration: x.duration,
    time: x.currentTime })));
  // Solo one stem: the others fall silent, it stays audible.
  await a.locator("#result [data-role=solo][data-stem=vocals]").click();
  out.muted_after_solo = await a.$$eval("#result audio", (xs) => Object.fromEntries(xs.map((x) => [x.dataset.stem, x.muted])));
  await a.locator("#result [data-role=play]").click();  // pause
  await shot(a, "separate-desktop.png", 1280, 900);
  await shot(a, "separate-phone.png", 390, 844);
  await a.setViewportSize({ width: 1280, height: 900 });
  const [download] = await Promise.all([a.waitForEvent("download", WAIT), a.locator("#download-zip").click()]);
  await download.saveAs(cfg.zip_path);
  out.zip_name = download.suggestedFilename();

  // --- refusals
  out.refused_400 = await refusal(a, cfg.bad_file);
  out.refused_413 = await refusal(a, cfg.big_file);

  out.jobs_a = await jobsShown(a);
  await shot(a, "jobs-desktop.png", 1280, 700);
  // Reopen the job from the list: its result comes back.
  await a.locator("#jobs-table tbody tr").first().getByRole("button", { name: /^Open/ }).click();
  await a.locator("#result .stem").nth(3).waitFor(WAIT);
  out.reopened = await a.$$eval("#result audio", (xs) => xs.length);

  // --- tenant B: its own page, its own jobs
  const b = current = await page(cfg.key_b);
  out.jobs_b = await jobsShown(b);
  out.key_in_url = [a.url(), b.url()].some((u) => u.includes(cfg.key_a) || u.includes(cfg.key_b));
  out.key_in_storage = await b.evaluate(() => sessionStorage.getItem("musicsplit.apiKey"));
  await b.close();
  current = a;

  // --- the listening room: stable (A) and canary (B) of the rollout
  await a.locator("#tab-room").click();
  await a.locator("#room-model option").first().waitFor({ ...WAIT, state: "attached" });
  out.rollouts = await a.$$eval("#room-model option", (xs) => xs.map((x) => x.textContent));
  await a.setInputFiles("#room-file", cfg.track);
  await a.locator("#room-submit").click();
  await a.locator("#room-result [data-role=agreement]").nth(3).waitFor(WAIT);
  out.agreement = await a.$$eval("#room-result tbody tr", (rows) => Object.fromEntries(rows.map((r) =>
    [r.dataset.stem, r.querySelector("[data-role=agreement]").textContent])));
  out.room_qualities = [await a.locator("[data-role=quality-A]").textContent(), await a.locator("[data-role=quality-B]").textContent()];
  await a.locator("#room-result [data-role=play]").click();
  await a.waitForFunction(() => Number(document.getElementById("room-result").dataset.position) > 0.5, null, WAIT);
  const before = Number(await a.locator("#room-result").getAttribute("data-position"));
  await a.locator("#room-result button.arm[data-arm=B]").click();
  await a.waitForFunction((t) => Number(document.getElementById("room-result").dataset.position) > t + 0.2, before, WAIT);
  out.room_after_switch = await a.evaluate(() => ({ ...document.getElementById("room-result").dataset }));
  out.room_switched_at = before;
  await a.locator("#room-result [data-role=play]").click();  // pause
  await a.locator("input[name=verdict][value=same]").check();
  await a.getByLabel("Note").fill(cfg.note);
  await a.getByRole("button", { name: "Record verdict" }).click();
  await a.locator("#verdicts-table tbody tr", { hasText: cfg.note }).waitFor(WAIT);
  await shot(a, "room-desktop.png", 1280, 900);
  await shot(a, "room-phone.png", 390, 844);
} catch (e) {
  out.error = `${e.message}\n--- page text:\n${current ? (await current.locator("body").innerText().catch(() => "")) : ""}`;
  if (current) await current.screenshot({ path: cfg.failure_shot, fullPage: true }).catch(() => {});
} finally {
  writeFileSync(process.argv[3], JSON.stringify(out, null, 1));
  await browser.close();
}
