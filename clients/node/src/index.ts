export { CacheClient, LoadError, NotFoundError, MAX_FILL_ATTEMPTS } from './client';
export type { GetOptions, LoadContext, Loader, Stats } from './client';
export type { CacheOptions, L1Options, ResolvedOptions } from './options';
export { resolveOptions, jitter } from './options';
export { LUA_DIR, Script, scripts } from './scripts';
export * as protocol from './protocol';
export {
  DEFAULT_EVENTS_CHANNEL,
  decode,
  encodeEnvelope,
  isStale,
  lease,
  newToken,
  parseEnvelope,
  parseEvent,
  parseLease,
  parseLsn,
  parseTombstone,
  tombstone,
  match,
} from './protocol';
export type { Content, Envelope, Fence, Kind, WalbustEvent } from './protocol';
