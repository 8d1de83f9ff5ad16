// Drives the real ComfyUI web UI in headless Debian chromium: loads an API-format workflow, queues it,
// waits for the Self Forcing preview widget to play every streamed frame, and reports what it drew.
//
// usage: node preview.mjs <base_url> <api_workflow.json> <out_dir>
// env:   SF_NODE_DIR  folder whose node_modules holds playwright-core (scripts/install_browser.sh)
//        SF_CHROMIUM  browser binary (default /usr/bin/chromium)
// Prints one JSON line with the results; writes <out_dir>/preview_widget.png (+ preview_node.png).
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const [baseUrl, workflowPath, outDir] = process.argv.slice(2);
const require = createRequire(path.join(process.env.SF_NODE_DIR, "package.json"));
const { chromium } = require("playwright-core");
const workflow = JSON.parse(fs.readFileSync(workflowPath, "utf8"));
const PREVIEW_TYPES = ["SFStreamSampler", "SFStreamExtend", "SFPreviewTestPattern"];
const nodeId = Object.keys(workflow).find((id) => PREVIEW_TYPES.includes(workflow[id].class_type));
const loopback = (url) => /^(https?|wss?):\/\/(127\.0\.0\.1|localhost)(:\d+)?\//.test(url) ||
  url.startsWith("data:") || url.startsWith("blob:");

// Skip the first-run templates dialog (a per-user server setting).
await fetch(`${baseUrl}/settings/Comfy.TutorialCompleted`, { method: "POST", body: "true" });

const browser = await chromium.launch({
  executablePath: process.env.SF_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,900",
         "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"],
});
const result = { blocked: [], errors: [], console: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  await page.route("**/*", (route) => {
    if (loopback(route.request().url())) return route.continue();
    result.blocked.push(route.request().url());
    return route.abort();
  });
  page.on("pageerror", (error) => result.errors.push(String(error)));
  page.on("console", (message) => {
    if (message.text().includes("sf_preview")) result.console.push(message.text());
  });

  const started = Date.now();
  await page.goto(baseUrl, { waitUntil: "domcontentloaded" });
  await page.waitForFunction(() => window.app?.graph && window.sfPreview, null, { timeout: 60000 });
  result.uiReadyMs = Date.now() - started;
  await page.keyboard.press("Escape");
  // Close the frontend's announcement banner, if any, so it does not cover the canvas in screenshots.
  await page.evaluate(() => {
    const text = [...document.querySelectorAll("body *")]
      .find((e) => e.children.length === 0 && e.textContent.includes("Introducing Nodes"));
    let banner = text;
    while (banner && banner.querySelectorAll("button").length < 2) banner = banner.parentElement;
    const buttons = banner ? banner.querySelectorAll("button") : [];
    buttons[buttons.length - 1]?.click();
  }).catch(() => {});

  result.widgetBeforeQueue = await page.evaluate(async ([wf, id]) => {
    await window.app.loadApiJson(wf, "sf_stream.json");
    const node = window.app.graph.getNodeById(Number(id));
    let y = 30;  // inputs in a column on the left, the streaming node on the right
    for (const other of window.app.graph._nodes.filter((n) => n !== node)) {
      other.pos = [20, y];
      y += other.size[1] + 50;
    }
    node.pos = [400, 30];
    node.setSize([520, 800]);
    for (const widget of node.widgets ?? []) {
      if (widget.name === "control_after_generate") widget.value = "fixed";
    }
    window.app.canvas.ds.offset = [80, 120];
    window.app.canvas.ds.scale = 0.85;
    window.app.graph.setDirtyCanvas(true, true);
    return Boolean(node.sfPlayer);
  }, [workflow, nodeId]);

  const queued = Date.now();
  await page.evaluate(() => window.app.queuePrompt(0, 1));
  await page.waitForFunction((id) => {
    const player = window.sfPreview.playerFor(id);
    return player?.stats.done && player.queue.length === 0 && player.stats.framesDrawn > 0;
  }, nodeId, { timeout: 400000, polling: 100 });
  result.streamMs = Date.now() - queued;

  Object.assign(result, await page.evaluate((id) => {
    const player = window.sfPreview.playerFor(id);
    const { width, height } = player.canvas;
    const pixels = player.canvas.getContext("2d").getImageData(0, 0, width, height).data;
    let sum = 0, sumSq = 0;
    const colours = new Set();
    for (let i = 0; i < pixels.length; i += 4) {
      const luma = 0.299 * pixels[i] + 0.587 * pixels[i + 1] + 0.114 * pixels[i + 2];
      sum += luma; sumSq += luma * luma;
      colours.add((pixels[i] >> 4) << 8 | (pixels[i + 1] >> 4) << 4 | pixels[i + 2] >> 4);
    }
    const n = pixels.length / 4;
    return {
      stats: player.stats, canvas: { width, height, lumaStd: Math.sqrt(sumSq / n - (sum / n) ** 2),
                                     colours: colours.size },
      readout: player.readout.textContent, playbackFps: player.playbackFps(),
      framesDrawnAttr: player.root.dataset.framesDrawn,
    };
  }, nodeId));

  await page.waitForTimeout(300);
  fs.mkdirSync(outDir, { recursive: true });
  await page.screenshot({ path: path.join(outDir, "preview_widget.png") });
  await page.evaluate((id) => window.sfPreview.playerFor(id).root.scrollIntoView(), nodeId);
  await (await page.evaluateHandle((id) => window.sfPreview.playerFor(id).root, nodeId))
    .asElement().screenshot({ path: path.join(outDir, "preview_node.png") });
} catch (error) {
  result.failure = String(error?.stack || error);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
