// Headless Chromium opens a viewer page that it can reach only over HTTP
// through a forwarder, with no IP path to the board for media: it must get
// the TURN server from the page's /ice-servers and play over a relay
// candidate. Run inside the viewer's network namespace by tests/turn_netns.rs.
//
// Usage: node turn.mjs PAGE_URL
// Prints one JSON line: the page's viewerStats once it plays (or what it
// had after 30 s).
import { launchChromium } from "./launch.mjs";

const url = process.argv[2];
const context = await launchChromium("streaming-turn-");
let result = {};
try {
  const page = context.pages()[0] || (await context.newPage());
  await page.goto(url);
  await page
    .waitForFunction(() => {
      const s = window.viewerStats;
      return s && s.framesDecoded > 30 && s.candidateType;
    }, null, { timeout: 30000, polling: 250 })
    .catch(() => {});
  result = await page.evaluate(() => ({ ...window.viewerStats, info: document.getElementById("info").textContent }));
} finally {
  await context.close();
}
console.log(JSON.stringify(result));
