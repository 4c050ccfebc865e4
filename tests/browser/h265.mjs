// Headless Chromium and an H.265 camera: with no H.265 decoder for WebRTC
// (Chromium on Linux without hardware decoding), the viewer page of a path
// without a fallback must say so in words instead of showing black video,
// and the page of a path with an H.264 fallback must play the fallback.
// Where this Chromium can receive H.265, both pages must play H.265.
//
// Usage: node h265.mjs BASE_URL SOLO_PATH FALLBACK_PATH
// Prints one JSON line with what it saw; the Rust test makes the assertions.
import { launchChromium } from "./launch.mjs";

const [base, solo, withFallback] = process.argv.slice(2);
const context = await launchChromium("streaming-h265-");
const result = {};
try {
  const page = context.pages()[0] || (await context.newPage());
  await page.goto(new URL(solo + "/", base).href);
  result.receivesH265 = await page.evaluate(() =>
    (RTCRtpReceiver.getCapabilities("video")?.codecs || []).some((c) => /h265|hevc/i.test(c.mimeType)));
  const watch = async (path) => {
    await page.goto(new URL(path + "/", base).href);
    await page.waitForFunction(() => {
      const s = window.viewerStats;
      return s && (s.state === "unsupported" || s.framesDecoded > 30);
    }, null, { timeout: 30000, polling: 200 });
    return page.evaluate(() => ({
      state: window.viewerStats.state,
      framesDecoded: window.viewerStats.framesDecoded,
      fallback: window.viewerStats.fallback,
      cameraCodec: window.viewerStats.cameraCodec,
      info: document.getElementById("info").textContent,
      infoColor: getComputedStyle(document.getElementById("info")).color,
      videoWidth: document.getElementById("video").videoWidth,
    }));
  };
  result.solo = await watch(solo);
  result.fallback = await watch(withFallback);
} finally {
  await context.close();
}
console.log(JSON.stringify(result));
