// One protocol source: lua/ holds verbatim copies of walbust's
// protocol/lua/*.lua (npm run sync-lua), and their SHA1s are the ones
// protocol/testdata/lua.sha1 lists, the names EVALSHA knows them by.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LUA_DIR, scripts } from '../dist/index.js';

const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');
const protocolDir = join(pkg, '..', '..', 'protocol');
const sha1 = (b) => createHash('sha1').update(b).digest('hex');

test('lua/ is a verbatim copy of protocol/lua/ with the SHA1s of protocol/testdata/lua.sha1', (t) => {
  assert.equal(LUA_DIR, join(pkg, 'lua'));
  if (!existsSync(protocolDir)) {
    t.skip('not inside the walbust repository');
    return;
  }
  const listed = new Map(
    readFileSync(join(protocolDir, 'testdata', 'lua.sha1'), 'utf8')
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => {
        const [sum, path] = l.trim().split(/\s+/);
        return [path.replace(/^lua\//, ''), sum];
      }),
  );
  const source = readdirSync(join(protocolDir, 'lua')).filter((n) => n.endsWith('.lua')).sort();
  const copies = readdirSync(LUA_DIR).filter((n) => n.endsWith('.lua')).sort();
  assert.deepEqual(copies, source, 'lua/ and protocol/lua/ hold different files: run npm run sync-lua');
  assert.deepEqual([...listed.keys()].sort(), source, 'protocol/testdata/lua.sha1 does not list every script');
  for (const name of source) {
    const copy = readFileSync(join(LUA_DIR, name));
    assert.ok(copy.equals(readFileSync(join(protocolDir, 'lua', name))), `lua/${name} differs from protocol/lua/${name}: run npm run sync-lua`);
    assert.equal(sha1(copy), listed.get(name), `lua/${name}: SHA1 differs from protocol/testdata/lua.sha1`);
  }
  const s = scripts();
  for (const [name, script] of [['fence.lua', s.fence], ['lease.lua', s.lease], ['cas.lua', s.cas]]) {
    assert.equal(script.sha1, listed.get(name), `${name}: the SHA1 the client sends to EVALSHA`);
  }
});
