// Headless Chromium opens the dashboard, follows its Recordings link, and
// plays recordings in the recordings page's <video> (the server's MP4,
// made on the fly): for each, currentTime must advance, a seek must land
// and play on, and the media requests must be Range requests answered
// with 206 (a seek far into a large file fetches from its middle).
//
// With STREAMING_TEST_FMP4_DIR set (init.mp4, seg0.m4s ... and codecs.txt
// there: an fMP4 from streaming_server::mp4::fmp4, each segment its parts'
// moof+mdat pairs concatenated), the page also appends them to a
// MediaSource (served from that directory under /fmp4/ by the browser's
// own routing) and plays and seeks that, as hls.js would.
//
// Usage: node recordings.mjs DASHBOARD_URL FILE_ID SEEK_SECONDS [FILE_ID SEEK_SECONDS ...]
// Prints one JSON line with what it saw; exits non-zero on a failure to
// run (the assertions are made by the Rust test that spawns this).
import { launchChromium } from "./launch.mjs";
import fs from "node:fs";
import path from "node:path";

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
  const fmp4 = process.env.STREAMING_TEST_FMP4_DIR;
  if (fmp4) {
    await page.route("**/fmp4/*", (route) =>
      route.fulfill({ body: fs.readFileSync(path.join(fmp4, path.basename(new URL(route.request().url()).pathname))) }));
    const segments = fs.readdirSync(fmp4).filter((f) => f.endsWith(".m4s")).length;
    const codecs = fs.readFileSync(path.join(fmp4, "codecs.txt"), "utf8").trim();
    result.mse = await page.evaluate(async ({ segments, codecs }) => {
      const out = {};
      const once = (target, name) => new Promise((r) => target.addEventListener(name, r, { once: true }));
      const mime = `video/mp4; codecs="${codecs}"`;
      out.typeSupported = MediaSource.isTypeSupported(mime);
      const v = document.createElement("video");
      v.muted = true;
      document.body.append(v);
      const ms = new MediaSource();
      v.src = URL.createObjectURL(ms);
      await once(ms, "sourceopen");
      const sb = ms.addSourceBuffer(mime);
      const append = (buf) => new Promise((resolve, reject) => {
        sb.addEventListener("updateend", resolve, { once: true });
        sb.addEventListener("error", () => reject(new Error("appendBuffer error")), { once: true });
        sb.appendBuffer(buf);
      });
      const get = async (name) => (await fetch("/fmp4/" + name)).arrayBuffer();
      await append(await get("init.mp4"));
      for (let i = 0; i < segments; i++) await append(await get(`seg${i}.m4s`));
      out.bufferedRanges = sb.buffered.length;
      out.buffered = [sb.buffered.start(0), sb.buffered.end(sb.buffered.length - 1)];
      ms.endOfStream();
      await v.play();
      const start = v.currentTime;
      await new Promise((r) => setTimeout(r, 1500));
      out.advanced = v.currentTime - start;
      const seeked = once(v, "seeked");
      v.currentTime = 4;
      out.seeked = await Promise.race([seeked.then(() => true), new Promise((r) => setTimeout(() => r(false), 20000))]);
      out.afterSeek = v.currentTime;
      out.framesDecoded = v.getVideoPlaybackQuality().totalVideoFrames;
      out.error = v.error ? String(v.error.code) : null;
      return out;
    }, { segments, codecs });
  }
} finally {
  await context.close();
}
console.log(JSON.stringify(result));
