// Headless Chromium uses the Flask companion's page as a person would: the
// live view plays (WebRTC straight to the streamer, a cross-origin /offer),
// Record starts a recording and the status line follows it, Stop ends it.
//
// Usage: node companion.mjs COMPANION_URL
// Prints one JSON line with what it saw; the Rust test that spawns this
// (tests/companion_browser.rs) makes the assertions.
import { launchChromium } from "./launch.mjs";

const url = process.argv[2];
const context = await launchChromium("streaming-companion-");
const result = { consoleErrors: [] };
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => { if (m.type() === "error") result.consoleErrors.push(m.text()); });
  await page.goto(url);
  const decoded = () => {
    const v = document.getElementById("video");
    return v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality().totalVideoFrames : 0;
  };
  await page.waitForFunction(decoded, null, { timeout: 20000, polling: 100 });
  const first = await page.evaluate(decoded);
  await new Promise((r) => setTimeout(r, 2000));
  result.framesIn2s = (await page.evaluate(decoded)) - first;
  result.live = await page.evaluate(() => document.getElementById("live").dataset.state);
  result.idleBefore = await page.evaluate(() => document.getElementById("status").dataset.state);

  await page.click("#record");
  await page.waitForFunction(() => document.getElementById("status").dataset.state === "recording", null, { timeout: 10000 });
  await new Promise((r) => setTimeout(r, 2000));
  result.recordingText = await page.textContent("#status");
  result.stopEnabledWhileRecording = await page.isEnabled("#stop");

  await page.click("#stop");
  await page.waitForFunction(() => document.getElementById("status").dataset.state === "idle", null, { timeout: 10000 });
  result.idleAfter = await page.textContent("#status");
  result.errorText = await page.textContent("#error");
} finally {
  await context.close();
}
console.log(JSON.stringify(result));
