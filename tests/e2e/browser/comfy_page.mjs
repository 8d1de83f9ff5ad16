// Shared by the browser scripts: a headless chromium that reaches nothing but the local ComfyUI server, and a
// page with the ComfyUI web UI loaded and our widget code ready.
// env: SF_NODE_DIR  folder whose node_modules holds playwright-core (scripts/install_browser.sh)
//      SF_CHROMIUM  browser binary (default /usr/bin/chromium)
import path from "node:path";
import { createRequire } from "node:module";

const require = createRequire(path.join(process.env.SF_NODE_DIR, "package.json"));
const { chromium } = require("playwright-core");

const isLoopback = (url) => /^(https?|wss?):\/\/(127\.0\.0\.1|localhost)(:\d+)?\//.test(url) ||
  url.startsWith("data:") || url.startsWith("blob:");

export async function launchBrowser(baseUrl) {
  // Skip the first-run templates dialog (a per-user server setting).
  await fetch(`${baseUrl}/settings/Comfy.TutorialCompleted`, { method: "POST", body: "true" });
  return chromium.launch({
    executablePath: process.env.SF_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,900",
           "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"],
  });
}

// A page on the ComfyUI UI, ready (result.uiReadyMs); page errors go to result.errors, blocked non-local
// requests to result.blocked when it has that list. `beforeLoad(page)` runs before the UI loads.
export async function openComfy(browser, baseUrl, result, { width = 1400, height = 900, beforeLoad } = {}) {
  const page = await browser.newPage({ viewport: { width, height } });
  await page.route("**/*", (route) => {
    if (isLoopback(route.request().url())) return route.continue();
    result.blocked?.push(route.request().url());
    return route.abort();
  });
  page.on("pageerror", (error) => result.errors.push(String(error)));
  if (beforeLoad) beforeLoad(page);
  const started = Date.now();
  await page.goto(baseUrl, { waitUntil: "domcontentloaded" });
  await page.waitForFunction(() => window.app?.graph && window.sfPreview, null, { timeout: 60000 });
  result.uiReadyMs = Date.now() - started;
  await page.keyboard.press("Escape");
  return page;
}
