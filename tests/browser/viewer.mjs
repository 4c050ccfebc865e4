// Headless Chromium watches the viewer page: several viewers at once, each
// must decode frames at the camera's rate; a screenshot of the video must
// not be black and two of them must differ (the picture moves).
//
// Usage: node viewer.mjs URL [VIEWERS] [SCREENSHOT.png] [reconnect]
// Prints one JSON line with what it measured; exits non-zero on a failure
// to run (assertions are made by the Rust test that spawns this).
// In reconnect mode it prints READY once frames play, then waits (up to
// 60 s) for the page to have reconnected and to play again, while the test
// stops and restarts the camera.
import { launchChromium } from "./launch.mjs";
import os from "node:os";
import path from "node:path";
import zlib from "node:zlib";

const url = process.argv[2];
const viewers = Number(process.argv[3] || 3);
const screenshotPath = process.argv[4] || path.join(os.tmpdir(), "viewer.png");
const reconnectMode = process.argv[5] === "reconnect";

// Minimal PNG decoder (8-bit RGB/RGBA, non-interlaced: what Chromium writes),
// so the check reads the real screenshot bytes without extra packages.
function decodePng(buf) {
  let pos = 8, width = 0, height = 0, colorType = 0;
  const idat = [];
  while (pos < buf.length) {
    const len = buf.readUInt32BE(pos);
    const type = buf.toString("ascii", pos + 4, pos + 8);
    const data = buf.subarray(pos + 8, pos + 8 + len);
    if (type === "IHDR") {
      width = data.readUInt32BE(0); height = data.readUInt32BE(4);
      if (data[8] !== 8 || data[12] !== 0) throw new Error("unsupported PNG");
      colorType = data[9];
    } else if (type === "IDAT") idat.push(data);
    pos += 12 + len;
  }
  const bpp = colorType === 6 ? 4 : colorType === 2 ? 3 : 0;
  if (!bpp) throw new Error("unsupported PNG color type " + colorType);
  const raw = zlib.inflateSync(Buffer.concat(idat));
  const stride = width * bpp;
  const out = Buffer.alloc(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= bpp ? out[y * stride + x - bpp] : 0;
      const b = y > 0 ? out[(y - 1) * stride + x] : 0;
      const c = x >= bpp && y > 0 ? out[(y - 1) * stride + x - bpp] : 0;
      let v = line[x];
      if (filter === 1) v += a;
      else if (filter === 2) v += b;
      else if (filter === 3) v += (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      out[y * stride + x] = v & 0xff;
    }
  }
  return { width, height, bpp, pixels: out };
}

function luma(img) {
  const values = new Float64Array(img.width * img.height);
  for (let i = 0; i < values.length; i++) {
    const p = i * img.bpp;
    values[i] = 0.299 * img.pixels[p] + 0.587 * img.pixels[p + 1] + 0.114 * img.pixels[p + 2];
  }
  return values;
}

const context = await launchChromium("streaming-chromium-");
const result = { viewers: [], screenshot: null };
try {
  const pages = [];
  for (let i = 0; i < viewers; i++) {
    const page = i === 0 && context.pages().length ? context.pages()[0] : await context.newPage();
    await page.setViewportSize({ width: 640, height: 360 });
    const opened = Date.now();
    await page.goto(url);
    pages.push({ page, opened });
  }
  // First decoded frame on every page.
  for (const { page, opened } of pages) {
    await page.waitForFunction(() => window.viewerStats && window.viewerStats.framesDecoded > 0, null, { timeout: 20000 });
    const s = await page.evaluate(() => window.viewerStats);
    result.viewers.push({ pageToFirstStatsMs: Date.now() - opened, firstFrameMs: s.firstFrameMs, timings: s.timings });
  }
  if (reconnectMode) {
    const page = pages[0].page;
    console.log("READY");
    // The camera goes away: the page notices the stall and reconnects.
    const dump = async (what) => {
      const s = await page.evaluate(() => ({ ...window.viewerStats }));
      throw new Error(what + ": " + JSON.stringify(s));
    };
    await page.waitForFunction(() => window.viewerStats.connects >= 2, null, { timeout: 60000, polling: 200 })
      .catch(() => dump("no reconnect"));
    const afterReconnect = await page.evaluate(() => window.viewerStats.framesDecoded);
    // And plays again once the camera is back.
    await page.waitForFunction((n) => window.viewerStats.framesDecoded > n + 30, afterReconnect, { timeout: 60000, polling: 200 })
      .catch(() => dump("no frames after reconnecting"));
    const s = await page.evaluate(() => ({ ...window.viewerStats }));
    console.log(JSON.stringify({ reconnected: true, connects: s.connects, lastError: s.lastError, framesDecoded: s.framesDecoded, fps: s.fps }));
    await context.close();
      process.exit(0);
  }
  // Frame rate over a 5 s window, per page.
  const before = await Promise.all(pages.map(({ page }) => page.evaluate(() => ({ ...window.viewerStats }))));
  const t0 = Date.now();
  await new Promise((r) => setTimeout(r, 5000));
  const after = await Promise.all(pages.map(({ page }) => page.evaluate(() => ({ ...window.viewerStats }))));
  const seconds = (Date.now() - t0) / 1000;
  after.forEach((s, i) => Object.assign(result.viewers[i], {
    fps: (s.framesDecoded - before[i].framesDecoded) / seconds,
    framesDecoded: s.framesDecoded,
    freezesDuringWindow: s.freezeCount - before[i].freezeCount,
    width: s.width, height: s.height, latencyMs: s.latencyMs, connects: s.connects, state: s.state,
    packetsLost: s.packetsLost, nackCount: s.nackCount, pliCount: s.pliCount, keyFramesDecoded: s.keyFramesDecoded,
  }));
  // Two screenshots of the first page's video, half a second apart.
  const video = pages[0].page.locator("video");
  const shot1 = await video.screenshot({ path: screenshotPath });
  await new Promise((r) => setTimeout(r, 500));
  const shot2 = await video.screenshot();
  const a = luma(decodePng(shot1)), b = luma(decodePng(shot2));
  let sum = 0, changed = 0;
  for (let i = 0; i < a.length; i++) {
    sum += a[i];
    if (Math.abs(a[i] - b[i]) > 8) changed++;
  }
  result.screenshot = { path: screenshotPath, meanLuma: sum / a.length, changedFraction: changed / a.length, pixels: a.length };
  // Close the tabs one by one: how long until the server has let each go.
  const health = new URL("/health", url).toString();
  const clients = async () => (await (await fetch(health)).json()).webrtc_clients;
  result.closes = [];
  for (const { page } of pages) {
    const before = await clients();
    const t = Date.now();
    await page.close();
    let now = before;
    while (now >= before && Date.now() - t < 10000) {
      await new Promise((r) => setTimeout(r, 20));
      now = await clients();
    }
    result.closes.push({ before, after: now, ms: Date.now() - t });
  }
} finally {
  await context.close();
}
console.log(JSON.stringify(result));
