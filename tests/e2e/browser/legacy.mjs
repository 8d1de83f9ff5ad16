// A UI-format workflow saved before the explicit widget choices (INT widgets where 0 / -1 meant "the
// checkpoint's value") loads in the real web UI and runs: the frontend keeps the old values, the server accepts
// them. Reports the sampler's widget values as sent and how the run ended.
//
// usage: node legacy.mjs <base_url> <ui_workflow.json>
// env:   SF_NODE_DIR, SF_CHROMIUM as for comfy_page.mjs
// Prints one JSON line with the results.
import fs from "node:fs";

import { launchBrowser, openComfy } from "./comfy_page.mjs";

const [baseUrl, workflowPath] = process.argv.slice(2);
const workflow = JSON.parse(fs.readFileSync(workflowPath, "utf8"));

const browser = await launchBrowser(baseUrl);
const result = { errors: [] };
try {
  const page = await openComfy(browser, baseUrl, result);
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
