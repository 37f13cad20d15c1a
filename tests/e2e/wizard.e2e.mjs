// End to end in the real app: the custom-protocol binary under Xvfb, driven through
// tauri-driver + WebKitWebDriver with WebdriverIO, through the whole wizard on the bundled
// demo model. Run by `make e2e` (which builds the binary and wraps this in xvfb-run).
//
// Env: APP (the binary), E2E_SCREENSHOTS (folder for one PNG per step).
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import assert from "node:assert/strict";
import { remote } from "webdriverio";

const APP = resolve(process.env.APP ?? "");
const SHOTS = resolve(process.env.E2E_SCREENSHOTS ?? "e2e-screenshots");
assert.ok(existsSync(APP), `APP=${APP} does not exist; build it with make app-binary`);
mkdirSync(SHOTS, { recursive: true });
const dataDir = mkdtempSync(join(tmpdir(), "peft-studio-e2e-"));

const driver = spawn("tauri-driver", ["--port", "4444"], {
  stdio: ["ignore", "inherit", "inherit"],
  env: { ...process.env, PEFT_STUDIO_DATA_DIR: dataDir, HF_HUB_OFFLINE: "1" },
});
await new Promise((r) => setTimeout(r, 1500));

const browser = await remote({
  hostname: "127.0.0.1",
  port: 4444,
  logLevel: "warn",
  capabilities: { "tauri:options": { application: APP }, "wdio:enforceWebDriverClassic": true },
});

let n = 0;
async function shot(name) {
  n += 1;
  // WebKit's snapshot can lag the DOM by a frame or two: let the page paint first.
  await browser.pause(500);
  const file = join(SHOTS, `${String(n).padStart(2, "0")}-${name}.png`);
  await browser.saveScreenshot(file);
  console.log(`  screenshot ${file}`);
}
const byTest = (id) => browser.$(`[data-testid="${id}"]`);
async function step(name) {
  await browser.$(`button[data-step="${name}"]`).click();
  await browser.$("h1=" + name[0].toUpperCase() + name.slice(1)).waitForDisplayed({ timeout: 10_000 });
}
async function textOf(id, timeout = 60_000) {
  const el = await byTest(id);
  await el.waitForDisplayed({ timeout });
  // textContent, not getText: WebKitWebDriver drops text of ellipsis-clipped elements.
  return el.getProperty("textContent");
}
async function until(what, fn, timeout = 120_000) {
  await browser.waitUntil(fn, { timeout, interval: 250, timeoutMsg: `timed out waiting for ${what}` });
}
const check = (name) => console.log(`✓ ${name}`);

try {
  await browser.setWindowSize(1280, 800).catch(() => {});
  // 1. Hardware: a scan and a clear sentence even without a GPU.
  const summary = await textOf("hardware-summary");
  assert.match(summary, /Training runs on the (CPU|GPU)/);
  await shot("hardware");
  check("hardware");

  // 2. Model: the bundled demo is preselected.
  await step("model");
  await until("demo model", async () => (await textOf("model-info")).includes("stories260K"));
  await shot("model");
  check("model");

  // 3. Data: choose the bundled dataset.
  await step("data");
  await (await byTest("use-demo-data")).click();
  await until("dataset report", async () => (await textOf("data-stats")).includes("bolt-stories.jsonl"));
  assert.match(await textOf("example"), /Bolt/);
  await shot("data");
  check("data");

  // 4. Plan: recommendation + live estimate; fix the length of the run, accept.
  await step("plan");
  await textOf("plan-summary");
  await textOf("estimate");
  // Set like a user typing (WebKitWebDriver refuses to clear inputs scrolled out of view).
  await browser.execute((v) => {
    const el = document.querySelector('[data-testid="max-steps"]');
    el.scrollIntoView();
    el.value = v;
    el.dispatchEvent(new Event("input", { bubbles: true }));
  }, process.env.E2E_STEPS ?? "150");
  await until("estimate", async () => (await textOf("estimate")).includes("Peak memory"));
  await shot("plan");
  await (await byTest("accept-plan")).click();
  await browser.$("h1=Train").waitForDisplayed({ timeout: 10_000 });
  check("plan");

  // 5. Train: the chart updates, pause (checkpoint), resume, complete.
  await (await byTest("start-training")).click();
  const chart = await byTest("loss-chart");
  await chart.waitForExist({ timeout: 60_000 });
  await until("chart points", async () => Number(await chart.getAttribute("data-points")) >= 3);
  const before = Number(await chart.getAttribute("data-points"));
  await until("more chart points", async () => Number(await chart.getAttribute("data-points")) > before);
  await (await byTest("pause-training")).click();
  await until("paused", async () => (await textOf("run-status")) === "paused");
  await shot("train-paused");
  check("train + pause");
  await (await byTest("resume-training")).click();
  await until("running again", async () => (await textOf("run-status")) === "running");
  // Abuse while it runs: a second Start is not offered; leaving the step and coming back
  // finds the same run going on.
  assert.equal(await (await byTest("start-training")).isEnabled(), false, "Start offered while a run trains");
  await step("chat");
  await step("train");
  assert.equal(await textOf("run-status"), "running");
  // Reloading the window mid-run: the app re-attaches to the run and follows it to the end.
  const points = Number(await (await byTest("loss-chart")).getAttribute("data-points"));
  await browser.refresh();
  await browser.$("h1=Train").waitForDisplayed({ timeout: 30_000 });
  await until("the reloaded view follows the run", async () =>
    Number(await (await byTest("loss-chart")).getAttribute("data-points")) > points);
  check("abuse: second start, leave and return, reload mid-run");
  await until("completed", async () => (await textOf("run-status")) === "completed", 300_000);
  await shot("train-done");
  check("resume + complete");

  // 6. Chat: a streamed reply from the tuned model, side by side with the base model.
  await step("chat");
  const input = await byTest("chat-input");
  await input.setValue("Tell me a story.");
  await (await byTest("chat-send")).click();
  await until("streamed reply", async () => !(await (await byTest("chat-stop")).isEnabled()) && (await textOf("chat-tuned")).includes("tokens/s"));
  const tuned = await textOf("chat-tuned");
  assert.ok(tuned.length > 40, `tuned reply too short: ${tuned}`);
  await shot("chat");
  check("chat");

  // 7. Export: the adapter files exist on disk.
  await step("export");
  await (await byTest("export-adapter")).click();
  const dir = await textOf("export-dir");
  for (const f of ["adapter_config.json", "adapter_model.safetensors"]) {
    assert.ok(existsSync(join(dir, f)) && statSync(join(dir, f)).size > 0, `${f} missing in ${dir}`);
  }
  await shot("export");
  check("export");
  console.log("e2e: all steps passed");
} catch (e) {
  await browser.saveScreenshot(join(SHOTS, "failure.png")).catch(() => {});
  const body = await browser.$("body").getText().catch(() => "?");
  console.error(`e2e failed; page text:\n${body.slice(0, 2000)}`);
  process.exitCode = 1;
  console.error(e);
} finally {
  await browser.deleteSession().catch(() => {});
  driver.kill();
}
