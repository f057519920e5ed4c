// getRefreshed against a real redis-server of the test's own: a key under
// walbust's refresh action and its stale flag in one MGET (the Go
// client's TestGetRefreshed, cacheaside/refreshed_test.go). The cluster
// case is in cluster.test.mjs.
import { test, before, after } from 'node:test';
import { CacheClient } from '../dist/index.js';
import { RUN, startRedis, checkRefreshedStory } from './helpers.mjs';

let srv;
let rdb;
before(async () => {
  srv = await startRedis();
  rdb = srv.client();
});
after(async () => {
  rdb.disconnect();
  await srv.stop();
});

test('getRefreshed: value, commit LSN and stale flag, any key on a standalone Redis', async () => {
  const c = new CacheClient(rdb);
  try {
    await checkRefreshedStory(rdb, c, `${RUN}product:1`);
    await checkRefreshedStory(rdb, c, `{${RUN}product:2}`);
  } finally {
    await c.close();
  }
});
