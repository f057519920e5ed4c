/** Capped exponential backoff; with equal jitter a delay lies between half of it and all of it. */
export class Backoff {
  private cur = 0;
  constructor(
    private readonly initial: number,
    private readonly max: number,
    private readonly factor = 2,
    private readonly equalJitter = false,
  ) {}

  next(): number {
    this.cur = this.cur === 0 ? this.initial : Math.min(this.cur * this.factor, this.max);
    return this.equalJitter ? this.cur / 2 + (Math.random() * this.cur) / 2 : this.cur;
  }

  reset(): void {
    this.cur = 0;
  }
}

/** Waits ms, rejecting with signal's reason as soon as it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal!.reason);
    };
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, Math.max(0, ms));
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
