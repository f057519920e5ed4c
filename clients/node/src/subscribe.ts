// The L1's subscription to walbust's events. The client opens a connection
// of its own for it (a duplicate of the standalone client, or of one
// Cluster node: classic PUBLISH reaches every node of a cluster), without
// ioredis's reconnection and resubscription, so that every drop is seen:
// the L1 serves only between a confirmed SUBSCRIBE and the first sign of
// trouble, and every (re)subscription starts it empty, because events
// published while it was not listening are lost.

import type { Cluster, Redis, RedisOptions } from 'ioredis';

import { Backoff, sleep } from './backoff';
import type { CacheClient } from './client';
import { parseEvent, type WalbustEvent } from './protocol';

const FLUSH: WalbustEvent = { lsn: 0n, keys: [], patterns: [], flush: true };

const SUBSCRIBER_OPTIONS: Partial<RedisOptions> = {
  autoResubscribe: false,
  retryStrategy: () => null, // one connection per subscription: the loop reconnects
  maxRetriesPerRequest: 0,
  enableOfflineQueue: true,
  lazyConnect: false,
  connectionName: 'walbust-cache-l1',
};

/** Keeps the L1's subscription up until the client closes. */
export async function subscribeLoop(c: CacheClient): Promise<void> {
  const backoff = new Backoff(100, 5_000);
  const signal = c.bg.signal;
  while (!signal.aborted) {
    const conn = subscriber(c.redis);
    let confirmed = false;
    if (conn) {
      confirmed = await listen(c, conn);
      conn.disconnect();
    }
    c.l1!.reset(false);
    c.n.l1Resets++;
    if (confirmed) backoff.reset(); // it worked: this failure is a new one
    await sleep(backoff.next(), signal).catch(() => {});
  }
}

function subscriber(rdb: Redis | Cluster): Redis | null {
  if (!(rdb as Cluster).isCluster) return (rdb as Redis).duplicate(SUBSCRIBER_OPTIONS);
  const nodes = (rdb as Cluster).nodes('all');
  if (nodes.length === 0) {
    // Not connected yet: ask for the slots, and try again after the backoff.
    if ((rdb as Cluster).status === 'wait') (rdb as Cluster).connect().catch(() => {});
    return null;
  }
  return nodes[Math.floor(Math.random() * nodes.length)].duplicate(SUBSCRIBER_OPTIONS);
}

/** Reads events until the subscription fails; resolves to whether it was ever confirmed. */
function listen(c: CacheClient, conn: Redis): Promise<boolean> {
  const { channel, pingInterval } = c.options.l1!;
  const signal = c.bg.signal;
  return new Promise((resolve) => {
    let confirmed = false;
    let done = false;
    let lastSeen = Date.now();
    let pinging = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearInterval(timer);
      signal.removeEventListener('abort', finish);
      conn.removeListener('messageBuffer', onMessage);
      resolve(confirmed);
    };
    const onMessage = (ch: Buffer, message: Buffer) => {
      lastSeen = Date.now();
      if (ch.toString('utf8') !== channel) return;
      let ev: WalbustEvent;
      try {
        ev = parseEvent(message);
      } catch {
        ev = FLUSH; // unreadable: assume the worst
      }
      c.applyEvent(ev);
    };
    conn.on('messageBuffer', onMessage);
    conn.on('error', () => {}); // 'close' follows
    conn.on('close', finish);
    conn.on('end', finish);
    signal.addEventListener('abort', finish, { once: true });
    conn.subscribe(channel).then(
      () => {
        if (done) return;
        lastSeen = Date.now();
        confirmed = true;
        c.l1!.reset(true);
        c.n.l1Resets++;
      },
      finish,
    );
    // Silent for an interval: ask. Silent for another: dead.
    const timer = setInterval(
      () => {
        const idle = Date.now() - lastSeen;
        if (pinging) {
          if (idle >= 2 * pingInterval) finish();
        } else if (idle >= pingInterval && confirmed) {
          pinging = true;
          conn.ping().then(() => {
            lastSeen = Date.now();
            pinging = false;
          }, finish);
        } else if (!confirmed && idle >= 2 * pingInterval + 5_000) {
          finish(); // SUBSCRIBE never answered
        }
      },
      Math.max(1, Math.floor(pingInterval / 4)),
    );
  });
}

/**
 * waitApplied's subscription: wakes the poller on every event past the
 * known position (or unreadable), until the client closes; it resubscribes
 * after a failure. Events only speed a wait up: the poll ends it anyway.
 */
export async function watchEvents(c: CacheClient, onEvent: (lsn: bigint | null) => void): Promise<void> {
  const backoff = new Backoff(100, 5_000);
  const signal = c.bg.signal;
  const channel = c.options.wait.channel;
  while (!signal.aborted) {
    const conn = subscriber(c.redis);
    if (conn) {
      await new Promise<void>((resolve) => {
        const finish = () => {
          signal.removeEventListener('abort', finish);
          resolve();
        };
        conn.on('messageBuffer', (ch: Buffer, message: Buffer) => {
          if (ch.toString('utf8') !== channel) return;
          backoff.reset();
          let lsn: bigint | null = null;
          try {
            lsn = parseEvent(message).lsn;
          } catch {}
          onEvent(lsn);
        });
        conn.on('error', () => {}); // 'close' follows
        conn.on('close', finish);
        conn.on('end', finish);
        signal.addEventListener('abort', finish, { once: true });
        conn.subscribe(channel).catch(finish);
      });
      conn.disconnect();
    }
    await sleep(backoff.next(), signal).catch(() => {});
  }
}
