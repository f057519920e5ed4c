// Copies the protocol's Lua scripts (../../protocol/lua/*.lua, the one
// source of them) into lua/, which is committed and shipped in the package.
// test/lua.test.mjs fails when a copy differs from its source or from the
// SHA1 listed in protocol/testdata/lua.sha1.
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(pkg, '..', '..', 'protocol', 'lua');
const dst = join(pkg, 'lua');

if (!existsSync(src)) {
  // Built outside the walbust repository (from a packed tarball): the
  // committed copies are all there is.
  if (existsSync(join(dst, 'lease.lua'))) {
    console.warn(`sync-lua: ${src} not found; keeping the copies in lua/`);
    process.exit(0);
  }
  console.error(`sync-lua: ${src} not found and lua/ is empty`);
  process.exit(1);
}
mkdirSync(dst, { recursive: true });
let changed = 0;
for (const name of readdirSync(src).filter((n) => n.endsWith('.lua')).sort()) {
  const from = join(src, name);
  const to = join(dst, name);
  if (existsSync(to) && readFileSync(to).equals(readFileSync(from))) continue;
  copyFileSync(from, to);
  changed++;
  console.log(`sync-lua: ${name} updated`);
}
if (changed === 0) console.log('sync-lua: lua/ is up to date');
