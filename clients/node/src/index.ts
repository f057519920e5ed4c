export { BadPositionError, CacheClient, LoadError, NoHashTagError, NotFoundError, WaitTimeoutError, MAX_FILL_ATTEMPTS } from './client';
export type { GetOptions, LoadContext, Loader, Refreshed, Stats, WaitAppliedOptions } from './client';
export type { CacheOptions, L1Options, ResolvedOptions, WaitOptions } from './options';
export { resolveOptions, jitter } from './options';
export { LUA_DIR, Script, scripts } from './scripts';
export * as protocol from './protocol';
export {
  DEFAULT_EVENTS_CHANNEL,
  appliedKey,
  decode,
  encodeEnvelope,
  isStale,
  lease,
  newToken,
  parseEnvelope,
  parseEvent,
  parseLease,
  parseLsn,
  formatLsn,
  hasHashTag,
  parseRefreshMark,
  refreshLsnKey,
  REFRESH_LSN_SUFFIX,
  parseTombstone,
  pastPageHeader,
  settledKey,
  tombstone,
  match,
} from './protocol';
export type { Content, Envelope, Fence, Kind, RefreshMark, WalbustEvent } from './protocol';
