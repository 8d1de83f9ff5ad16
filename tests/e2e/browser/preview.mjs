// Drives the real ComfyUI web UI in headless Debian chromium: loads an API-format workflow, queues it,
// waits for the Self Forcing preview widget to play every streamed frame, and reports what it drew.
//
// usage: node preview.mjs <base_url> <api_workflow.json> <out_dir>
// env:   SF_NODE_DIR, SF_CHROMIUM as for comfy_page.mjs
// Prints one JSON line with the results; writes <out_dir>/preview_widget.png (+ preview_node.png).
import fs from "node:fs";
import path from "node:path";

import { launchBrowser, openComfy } from "./comfy_page.mjs";

const [baseUrl, workflowPath, outDir] = process.argv.slice(2);
const workflow = JSON.parse(fs.readFileSync(workflowPath, "utf8"));
const PREVIEW_TYPES = ["SFStreamSampler", "SFStreamExtend", "SFPreviewTestPattern"];
const nodeId = Object.keys(workflow).find((id) => PREVIEW_TYPES.includes(workflow[id].class_type));

const browser = await launchBrowser(baseUrl);
const result = { blocked: [], errors: [], console: [] };
try {
  const page = await openComfy(browser, baseUrl, result, {
    beforeLoad: (p) => p.on("console", (message) => {
      if (message.text().includes("sf_preview")) result.console.push(message.text());
    }),
  });
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
