// The protocol's Lua scripts, loaded from the package's lua/ directory:
// verbatim copies of walbust's protocol/lua/*.lua (npm run sync-lua), so
// their SHA1s are the names EVALSHA knows them by in every language.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Cluster, Redis } from 'ioredis';

/** The directory holding fence.lua, lease.lua and cas.lua. */
export const LUA_DIR = join(__dirname, '..', 'lua');

/** A script run on one key with EVALSHA, falling back to EVAL on NOSCRIPT. */
export class Script {
  readonly source: string;
  readonly sha1: string;

  constructor(readonly name: string) {
    this.source = readFileSync(join(LUA_DIR, name), 'utf8');
    this.sha1 = createHash('sha1').update(this.source).digest('hex');
  }

  /**
   * Runs the script over key. Bulk replies come back as Buffers. On a
   * Cluster, ioredis routes EVALSHA by its key (numkeys 1), and the EVAL
   * fallback goes to the same node, which then caches the script.
   */
  async run(rdb: Redis | Cluster, key: string, ...args: (string | Buffer)[]): Promise<unknown> {
    try {
      return await (rdb as unknown as BufferEval).evalshaBuffer(this.sha1, 1, key, ...args);
    } catch (err) {
      if (err instanceof Error && err.message.startsWith('NOSCRIPT')) {
        return await (rdb as unknown as BufferEval).evalBuffer(this.source, 1, key, ...args);
      }
      throw err;
    }
  }
}

/** ioredis has Buffer variants of every command at run time; its typings omit these two. */
interface BufferEval {
  evalshaBuffer(sha1: string, numkeys: number, ...args: (string | Buffer)[]): Promise<unknown>;
  evalBuffer(script: string, numkeys: number, ...args: (string | Buffer)[]): Promise<unknown>;
}

let cached: { fence: Script; lease: Script; cas: Script } | undefined;

/** The three scripts, read once. */
export function scripts(): { fence: Script; lease: Script; cas: Script } {
  cached ??= { fence: new Script('fence.lua'), lease: new Script('lease.lua'), cas: new Script('cas.lua') };
  return cached;
}
