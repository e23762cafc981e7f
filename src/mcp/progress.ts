/**
 * MCP progress notifications for a tool call whose client sent `_meta.progressToken`: one
 * notification at once for each new status message, and the latest again every interval while
 * the call lasts, so a client using `resetTimeoutOnProgress` keeps waiting (e.g. for a human).
 */
export interface ProgressReporter {
  /** Sends `message` now and repeats it every interval until the next update or stop. */
  update(message: string): void;
  stop(): void;
}

export interface ProgressSink {
  /** The MCP request handler's `extra.sendNotification`. */
  send(notification: {
    method: 'notifications/progress';
    params: { progressToken: string | number; progress: number; message: string };
  }): Promise<void>;
  progressToken: string | number;
}

/** Longest message sent in a notification. */
const MAX_MESSAGE_CHARS = 500;

export function startProgress(
  sink: ProgressSink,
  intervalMs: number,
  initial: string,
): ProgressReporter {
  let progress = 0;
  let message = initial.slice(0, MAX_MESSAGE_CHARS);
  let stopped = false;
  const send = () => {
    if (stopped) return;
    progress += 1;
    // A client that went away just misses the notification; the call itself decides the outcome.
    sink
      .send({
        method: 'notifications/progress',
        params: { progressToken: sink.progressToken, progress, message },
      })
      .catch(() => undefined);
  };
  const timer = setInterval(send, intervalMs);
  timer.unref();
  return {
    update(next: string) {
      message = next.slice(0, MAX_MESSAGE_CHARS);
      send();
    },
    stop() {
      stopped = true;
      clearInterval(timer);
    },
  };
}
