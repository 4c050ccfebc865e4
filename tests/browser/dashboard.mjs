// Headless Chromium opens the dashboard at `/`: every path's card must play
// (its frame's viewer decodes frames), show its state and figures, work at
// phone width without sideways scrolling, and its record button must start
// and stop a recording of that path.
//
// Usage: node dashboard.mjs URL EXPECTED_PATHS
// Prints one JSON line with what it saw; exits non-zero on a failure to run
// (the assertions are made by the Rust test that spawns this).
import { launchChromium } from "./launch.mjs";

const url = process.argv[2];
const expected = Number(process.argv[3] || 3);
const context = await launchChromium("streaming-dashboard-");
const result = { desktop: {}, phone: {}, record: null };
try {
  const page = context.pages()[0] || (await context.newPage());
  await page.setViewportSize({ width: 1280, height: 900 });
  const opened = Date.now();
  await page.goto(url);
  await page.waitForFunction((n) => document.querySelectorAll(".cell").length === n, expected, { timeout: 10000 });
  // Every frame's viewer decodes frames.
  await page.waitForFunction(() => {
    const frames = [...document.querySelectorAll(".cell iframe")];
    return frames.every((f) => f.contentWindow && f.contentWindow.viewerStats && f.contentWindow.viewerStats.framesDecoded > 30);
  }, null, { timeout: 30000, polling: 250 });
  result.desktop.playingAfterMs = Date.now() - opened;
  // Figures and states as the cards show them, after a /paths refresh.
  await new Promise((r) => setTimeout(r, 2500));
  result.desktop.cards = await page.evaluate(() => [...document.querySelectorAll(".cell")].map((cell) => ({
    path: cell.dataset.path,
    state: cell.querySelector(".state").textContent,
    figures: cell.querySelector(".figures").textContent,
    width: cell.getBoundingClientRect().width,
    framesDecoded: cell.querySelector("iframe").contentWindow.viewerStats.framesDecoded,
  })));
  result.desktop.columns = await page.evaluate(() => getComputedStyle(document.getElementById("grid")).gridTemplateColumns.split(" ").length);

  // Phone width: one column, nothing wider than the screen, still playing.
  await page.setViewportSize({ width: 390, height: 844 });
  await new Promise((r) => setTimeout(r, 1000));
  result.phone = await page.evaluate(() => ({
    innerWidth: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    columns: getComputedStyle(document.getElementById("grid")).gridTemplateColumns.split(" ").length,
    cellWidths: [...document.querySelectorAll(".cell")].map((c) => c.getBoundingClientRect().width),
  }));
  const before = await page.evaluate(() => [...document.querySelectorAll(".cell iframe")].map((f) => f.contentWindow.viewerStats.framesDecoded));
  await new Promise((r) => setTimeout(r, 1500));
  const after = await page.evaluate(() => [...document.querySelectorAll(".cell iframe")].map((f) => f.contentWindow.viewerStats.framesDecoded));
  result.phone.framesAdvanced = after.map((n, i) => n - before[i]);

  // The record button of the last card: start, then stop.
  const last = page.locator(".cell").last();
  const name = await last.getAttribute("data-path");
  await last.locator("button").click();
  await page.waitForFunction((n) => document.querySelector(`.cell[data-path="${n}"] button`).textContent === "Stop recording", name, { timeout: 10000 });
  const during = await (await fetch(new URL(name + "/status", url))).json();
  await new Promise((r) => setTimeout(r, 1500));
  await last.locator("button").click();
  await page.waitForFunction((n) => document.querySelector(`.cell[data-path="${n}"] button`).textContent === "Record", name, { timeout: 10000 });
  const after_stop = await (await fetch(new URL(name + "/status", url))).json();
  result.record = { path: name, during, after: after_stop };
} finally {
  await context.close();
}
console.log(JSON.stringify(result));
