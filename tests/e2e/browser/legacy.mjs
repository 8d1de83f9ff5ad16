// A UI-format workflow saved before the explicit widget choices (INT widgets where 0 / -1 meant "the
// checkpoint's value") loads in the real web UI and runs: the frontend keeps the old values, the server accepts
// them. Reports the sampler's widget values as sent and how the run ended.
//
// usage: node legacy.mjs <base_url> <ui_workflow.json>
// env:   SF_NODE_DIR, SF_CHROMIUM as for preview.mjs
// Prints one JSON line with the results.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const [baseUrl, workflowPath] = process.argv.slice(2);
const require = createRequire(path.join(process.env.SF_NODE_DIR, "package.json"));
const { chromium } = require("playwright-core");
const workflow = JSON.parse(fs.readFileSync(workflowPath, "utf8"));
const loopback = (url) => /^(https?|wss?):\/\/(127\.0\.0\.1|localhost)(:\d+)?\//.test(url) ||
  url.startsWith("data:") || url.startsWith("blob:");

await fetch(`${baseUrl}/settings/Comfy.TutorialCompleted`, { method: "POST", body: "true" });
const browser = await chromium.launch({
  executablePath: process.env.SF_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"],
});
const result = { errors: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  await page.route("**/*", (route) => (loopback(route.request().url()) ? route.continue() : route.abort()));
  page.on("pageerror", (error) => result.errors.push(String(error)));
  await page.goto(baseUrl, { waitUntil: "domcontentloaded" });
  await page.waitForFunction(() => window.app?.graph && window.sfPreview, null, { timeout: 60000 });
  await page.keyboard.press("Escape");
  Object.assign(result, await page.evaluate(async (wf) => {
    await window.app.loadGraphData(wf);
    const sampler = window.app.graph._nodes.find((n) => n.comfyClass === "SFStreamSampler");
    const { output } = await window.app.graphToPrompt();
    return { sent: output[String(sampler.id)].inputs,
             widgets: Object.fromEntries(sampler.widgets.map((w) => [w.name, w.value])) };
  }, workflow));
  result.outcome = await page.evaluate(async () => {  // how the queued run ends, from the server's history
    const history = async () => (await fetch("/history")).json();
    const before = new Set(Object.keys(await history()));
    await window.app.queuePrompt(0, 1);
    for (let waited = 0; waited < 300000; waited += 250) {
      const entries = Object.entries(await history()).filter(([id]) => !before.has(id));
      const ended = entries.find(([, entry]) => entry.status?.completed || entry.status?.status_str === "error");
      if (ended) return { status: ended[1].status.status_str, outputs: ended[1].outputs };
      await new Promise((r) => setTimeout(r, 250));
    }
    return { status: "timeout" };
  });
} catch (error) {
  result.failure = String(error?.stack || error);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
