// Headless Chromium opens the dashboard, follows its Recordings link, and
// plays recordings in the recordings page's <video> (the server's MP4,
// made on the fly): for each, currentTime must advance, a seek must land
// and play on, and the media requests must be Range requests answered
// with 206 (a seek far into a large file fetches from its middle).
//
// Usage: node recordings.mjs DASHBOARD_URL FILE_ID SEEK_SECONDS [FILE_ID SEEK_SECONDS ...]
// Prints one JSON line with what it saw; exits non-zero on a failure to
// run (the assertions are made by the Rust test that spawns this).
import { launchChromium } from "./launch.mjs";

const url = process.argv[2];
const plays = [];
for (let i = 3; i + 1 < process.argv.length; i += 2) plays.push({ file: process.argv[i], seekTo: Number(process.argv[i + 1]) });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const context = await launchChromium("streaming-recordings-");
const result = { plays: [], consoleErrors: [] };
let mediaRequests = [];
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => { if (m.type() === "error") result.consoleErrors.push(m.text()); });
  page.on("response", (response) => {
    if (response.url().includes("format=mp4")) {
      mediaRequests.push({ range: response.request().headers()["range"] || null, status: response.status() });
    }
  });
  await page.goto(url);
  await page.click("#recordings-link");
  await page.waitForFunction((n) => window.recordingsPage && window.recordingsPage.entries.length >= n, plays.length, { timeout: 15000 });
  result.pageUrl = page.url();
  result.listed = await page.evaluate(() => window.recordingsPage.entries.map((e) => e.file));
  for (const { file, seekTo } of plays) {
    mediaRequests = [];
    const seen = { file, rowText: await page.locator(`.row[data-file="${file}"] .facts`).textContent() };
    await page.click(`.row[data-file="${file}"] button.play`);
    // Playing: currentTime moves.
    await page.waitForFunction((f) => window.recordingsPage.playing === f && document.getElementById("player").currentTime > 0.3,
      file, { timeout: 20000 });
    const start = await page.evaluate(() => document.getElementById("player").currentTime);
    await sleep(1500);
    seen.advanced = (await page.evaluate(() => document.getElementById("player").currentTime)) - start;
    // Seeking: the seeked event fires at the target, and playback goes on from there.
    seen.seek = await page.evaluate(async (target) => {
      const v = document.getElementById("player");
      const seeked = new Promise((r) => v.addEventListener("seeked", r, { once: true }));
      v.currentTime = target;
      const fired = await Promise.race([seeked.then(() => true), new Promise((r) => setTimeout(() => r(false), 20000))]);
      const at = v.currentTime;
      await new Promise((r) => setTimeout(r, 1000));
      return { fired, at, later: v.currentTime, duration: v.duration, size: [v.videoWidth, v.videoHeight],
               error: v.error ? String(v.error.code) : null };
    }, seekTo);
    seen.pageError = await page.evaluate(() => window.recordingsPage.error);
    seen.mediaRequests = mediaRequests;
    result.plays.push(seen);
  }
} finally {
  await context.close();
}
console.log(JSON.stringify(result));
