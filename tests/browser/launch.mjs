// Starts Debian's headless Chromium (STREAMING_TEST_CHROMIUM, default
// /usr/bin/chromium) with a fresh profile, as the browser tests need it;
// closing the returned context also removes the profile.
import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

// `preferences`: Chromium user preferences written into the fresh profile
// before it starts (e.g. `{ webrtc: { ip_handling_policy:
// "disable_non_proxied_udp" } }`: no UDP for WebRTC, as on a network that
// lets only HTTP through; the command-line switch for it is ignored by
// headless Chromium, the preference is not).
export async function launchChromium(profilePrefix, { preferences = null } = {}) {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), profilePrefix));
  if (preferences) {
    fs.mkdirSync(path.join(userDataDir, "Default"));
    fs.writeFileSync(path.join(userDataDir, "Default", "Preferences"), JSON.stringify(preferences));
  }
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.STREAMING_TEST_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      // The server offers loopback candidates only (tests talk to 127.0.0.1).
      "--allow-loopback-in-peer-connection",
      // Real browsers hide their host addresses behind mDNS names, which the
      // server cannot resolve; it learns the address from the browser's
      // checks instead. STREAMING_TEST_MDNS=1 tests exactly that.
      ...(process.env.STREAMING_TEST_MDNS === "1" ? [] : ["--disable-features=WebRtcHideLocalIpsWithMdns"]),
      "--autoplay-policy=no-user-gesture-required",
    ],
  });
  // After Chromium has exited, not on its "close" event (it still writes then).
  const close = context.close.bind(context);
  context.close = async (...args) => {
    await close(...args);
    fs.rmSync(userDataDir, { recursive: true, force: true });
  };
  return context;
}
