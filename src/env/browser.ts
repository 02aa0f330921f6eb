/** Launching Debian's Chromium through playwright-core. */
import { accessSync, constants } from 'node:fs';
import { chromium, type Browser } from 'playwright-core';

export const CHROMIUM_ARGS = [
  '--no-sandbox', // we run as root in CI
  '--no-zygote', // the headless Chromium staged for the GPU machine needs it; Debian's runs the same with it
  '--disable-gpu',
  '--disable-dev-shm-usage',
  '--no-first-run',
  '--disable-background-networking', // otherwise it floods the closed network
  '--disable-component-update',
  '--disable-sync',
  '--disable-extensions',
  '--mute-audio',
  '--block-new-web-contents', // window.open and target=_blank popups fail
];

/** Defence in depth next to request routing: no host name resolves, except the task server's. */
export function hostResolverRule(allowedHosts: Iterable<string> = []): string {
  const hosts = new Set(['127.0.0.1', 'localhost', ...allowedHosts]);
  return `--host-resolver-rules=MAP * ~NOTFOUND , ${[...hosts].map((h) => `EXCLUDE ${h}`).join(' , ')}`;
}

export async function launchChromium(opts: { chromiumPath: string; headless: boolean; allowedHosts?: Iterable<string> }): Promise<Browser> {
  try {
    accessSync(opts.chromiumPath, constants.X_OK);
  } catch {
    throw new Error(
      `Chromium not found or not executable at ${opts.chromiumPath}. Install it with ` +
        `\`apt-get install chromium\` or point CHROMIUM_PATH (or the chromiumPath option) at a Chromium binary.`,
    );
  }
  return chromium.launch({ executablePath: opts.chromiumPath, headless: opts.headless, args: [...CHROMIUM_ARGS, hostResolverRule(opts.allowedHosts)], timeout: 60_000 });
}

/** The browser process id (from the browser itself), for diagnostics and crash tests. */
export async function browserPid(browser: Browser): Promise<number | null> {
  const session = await browser.newBrowserCDPSession();
  try {
    const info = (await session.send('SystemInfo.getProcessInfo')) as { processInfo: Array<{ type: string; id: number }> };
    return info.processInfo.find((p) => p.type === 'browser')?.id ?? null;
  } finally {
    await session.detach().catch(() => undefined);
  }
}

const FATAL = /Target page, context or browser has been closed|Target crashed|Page crashed|Browser has been closed|browser has disconnected|Target closed|Session closed|WebSocket is not open|Connection closed/i;

/** True for errors that mean the page or browser is gone (not an ordinary action failure). */
export function isFatalBrowserError(error: unknown): boolean {
  return error instanceof Error && FATAL.test(error.message);
}
