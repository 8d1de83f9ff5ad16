// Converts API-format workflows into UI-format workflows (what users drag onto the canvas) with the real
// ComfyUI frontend: loadApiJson, arrange, then graph.serialize().
//
// usage: node api_to_ui.mjs <base_url> <out_dir> <api_workflow.json>...
// env:   SF_NODE_DIR, SF_CHROMIUM as for comfy_page.mjs
// Writes <out_dir>/<name>.json per input; prints one JSON line {written: [...], errors: [...]}.
import fs from "node:fs";
import path from "node:path";

import { launchBrowser, openComfy } from "./comfy_page.mjs";

const [baseUrl, outDir, ...inputs] = process.argv.slice(2);

const browser = await launchBrowser(baseUrl);
const result = { written: [], errors: [] };
try {
  const page = await openComfy(browser, baseUrl, result, { width: 1600, height: 1000 });
  fs.mkdirSync(outDir, { recursive: true });
  for (const input of inputs) {
    const api = JSON.parse(fs.readFileSync(input, "utf8"));
    const name = path.basename(input);
    const ui = await page.evaluate(async ([wf, file]) => {
      window.app.graph.clear();
      await window.app.loadApiJson(wf, file);
      for (const node of window.app.graph._nodes) {
        for (const widget of node.widgets ?? []) {
          if (widget.name === "control_after_generate") widget.value = "fixed"; // keep the workflow's seed
        }
        if (node.sfPlayer) node.setSize([460, 780]); // room for the live preview
      }
      window.app.graph.arrange(60);
      return window.app.graph.serialize();
    }, [api, name]);
    fs.writeFileSync(path.join(outDir, name), JSON.stringify(ui, null, 2) + "\n");
    result.written.push(name);
  }
} catch (error) {
  result.errors.push(String(error?.stack || error));
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
