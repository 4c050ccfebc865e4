// Headless Chromium with WebRTC's UDP blocked (as on a guest Wi-Fi that
// lets only HTTP through) opens the viewer page: it must fall back to HLS
// by itself, say so on screen, and play, frames advancing. Measures the
// delay from capture to presentation (hls.js's playingDate, which is the
// playlist's program date time: the camera's capture time) over a window.
//
// Usage: node hls.mjs URL [SECONDS]
// Prints one JSON line; the Rust test (tests/hls_browser.rs) asserts.
import { launchChromium } from "./launch.mjs";

const url = process.argv[2];
const seconds = Number(process.argv[3] || 8);
// No proxy, so no UDP at all for WebRTC: no candidates, ICE cannot connect.
const context = await launchChromium("streaming-chromium-hls-", {
  preferences: { webrtc: { ip_handling_policy: "disable_non_proxied_udp" } },
});
const result = {};
try {
  const page = context.pages()[0] || (await context.newPage());
  await page.setViewportSize({ width: 640, height: 360 });
  const opened = Date.now();
  await page.goto(url);
  await page.waitForFunction(() => window.viewerStats && window.viewerStats.mode === "hls", null, { timeout: 30000 });
  result.fallbackAfterMs = Date.now() - opened;
  await page.waitForFunction(() => window.viewerStats.framesDecoded > 30, null, { timeout: 30000, polling: 200 });
  result.playingAfterMs = Date.now() - opened;
  const before = await page.evaluate(() => ({ ...window.viewerStats }));
  const latencies = [];
  const started = Date.now();
  while (Date.now() - started < seconds * 1000) {
    await page.waitForTimeout(500);
    const s = await page.evaluate(() => ({ latencyMs: window.viewerStats.latencyMs }));
    if (typeof s.latencyMs === "number") latencies.push(s.latencyMs);
  }
  const after = await page.evaluate(() => ({ ...window.viewerStats, info: document.getElementById("info").textContent }));
  latencies.sort((a, b) => a - b);
  const pct = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.round((latencies.length - 1) * p))] : null);
  Object.assign(result, {
    mode: after.mode,
    engine: after.hlsEngine,
    reason: after.fallbackReason,
    connects: after.connects,
    info: after.info,
    framesBefore: before.framesDecoded,
    framesAfter: after.framesDecoded,
    seconds: (Date.now() - started) / 1000,
    width: after.width,
    height: after.height,
    lastError: after.lastError,
    latencySamples: latencies.length,
    latencyP50Ms: pct(0.5),
    latencyMaxMs: latencies.length ? latencies[latencies.length - 1] : null,
  });
} finally {
  await context.close();
}
console.log(JSON.stringify(result));
