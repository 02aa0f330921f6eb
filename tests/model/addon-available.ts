// Whether the native addon is built; tests that need it skip with this reason in their title otherwise.
import { existsSync } from 'node:fs';
import { join } from 'node:path';

const root = join(import.meta.dirname, '..', '..');
export const ADDON_PATH = process.env.WEBGRPO_ADDON ?? join(root, 'build', 'Release', 'webgrpo.node');
export const HAVE_ADDON = existsSync(ADDON_PATH) || existsSync(join(root, 'build', 'Debug', 'webgrpo.node'));
export const NO_ADDON_REASON = HAVE_ADDON ? '' : ` [SKIPPED: native addon not built (${ADDON_PATH}); run npm run build:native]`;
