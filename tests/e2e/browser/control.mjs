// Live control with two tabs and a subgraph, in the real web UI (headless Debian chromium): both tabs load one
// workflow; tab A wraps the streaming node into a subgraph and queues it; tab B (same graph, other client) can
// neither stop it with its own Stop button nor with a request naming another execution; tab A's Stop button
// ends it gracefully. Reports what each tab's player saw.
//
// usage: node control.mjs <base_url> <api_workflow.json> <out_dir>
// env:   SF_NODE_DIR, SF_CHROMIUM as for comfy_page.mjs
// Prints one JSON line with the results.
import fs from "node:fs";
import path from "node:path";

import { launchBrowser, openComfy } from "./comfy_page.mjs";

const [baseUrl, workflowPath, outDir] = process.argv.slice(2);
const workflow = JSON.parse(fs.readFileSync(workflowPath, "utf8"));
const nodeId = Object.keys(workflow)[0];

const browser = await launchBrowser(baseUrl);
const result = { errors: [] };

async function openTab() {
  const page = await openComfy(browser, baseUrl, result);
  await page.evaluate(async (wf) => { await window.app.loadApiJson(wf, "sf_control.json"); }, workflow);
  return page;
}

try {
  const tabA = await openTab();
  const tabB = await openTab();
  // Tab A: the streaming node goes into a subgraph; its executed id becomes "<subgraph node>:<inner id>".
  result.subgraphNode = await tabA.evaluate((id) => {
    const node = window.app.graph.getNodeById(Number(id));
    const { node: wrapper } = window.app.graph.convertToSubgraph(new Set([node]));
    return String(wrapper.id);
  }, nodeId);
  const locator = `${result.subgraphNode}:${nodeId}`;
  result.locator = locator;
  await tabA.evaluate(() => window.app.queuePrompt(0, 1));
  await tabA.waitForFunction((loc) => (window.sfPreview.playerFor(loc)?.stats.chunks ?? 0) >= 2, locator,
                             { timeout: 120000, polling: 50 });

  // Tab B: same workflow, no stream of its own on that node.
  result.tabB = await tabB.evaluate(async ([id, loc]) => {
    const player = window.sfPreview.playerFor(id);
    await player.stop();
    const foreign = await fetch("/sf/stop", {
      method: "POST", body: JSON.stringify({ node: loc, prompt_id: "another-execution" }) });
    return { readout: player.readout.textContent, chunks: player.stats.chunks, foreignStatus: foreign.status };
  }, [nodeId, locator]);
  const before = await tabA.evaluate((loc) => window.sfPreview.playerFor(loc).stats.chunks, locator);
  await tabA.waitForFunction(([loc, n]) => window.sfPreview.playerFor(loc).stats.chunks > n + 1, [locator, before],
                             { timeout: 60000, polling: 50 });
  result.stillStreamingAfterTabB = true;

  // Tab A's own Stop button (the player inside the subgraph) ends the stream after the current chunk.
  await tabA.evaluate((loc) => window.sfPreview.playerFor(loc).stop(), locator);
  await tabA.waitForFunction((loc) => {
    const player = window.sfPreview.playerFor(loc);
    return player.stats.done && player.queue.length === 0;
  }, locator, { timeout: 60000, polling: 50 });
  await tabA.waitForTimeout(200);
  result.tabA = await tabA.evaluate((loc) => {
    const player = window.sfPreview.playerFor(loc);
    return { stats: player.stats, animating: player.animating, streamNode: player.streamNode,
             maxQueuedFrames: player.maxQueuedFrames(player.canvas.width, player.canvas.height),
             rootNodePlayer: Boolean(window.app.graph.getNodeById(Number(loc.split(":")[1]))?.sfPlayer) };
  }, locator);
  fs.mkdirSync(outDir, { recursive: true });
  await tabA.screenshot({ path: path.join(outDir, "control_tab_a.png") });
} catch (error) {
  result.failure = String(error?.stack || error);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
