import type { EventChannels } from './platform.js';

/**
 * Shares one event channel handle among the users in a worker: each port
 * gets its own callback, as interrupt handlers share a guest's upcall.
 */
export class EventDispatcher {
  private readonly handlers = new Map<number, () => void>();

  constructor(readonly channels: EventChannels) {
    channels.onEvent((port) => this.handlers.get(port)?.());
  }

  on(port: number, handler: () => void): void {
    this.handlers.set(port, handler);
  }

  off(port: number): void {
    this.handlers.delete(port);
  }
}
