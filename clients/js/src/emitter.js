// Events for the application: a small emitter, and the rule that a
// listener's exception never reaches the code that emitted.

export class Emitter {
  constructor() {
    this._listeners = new Map();
  }
  on(type, fn) {
    let set = this._listeners.get(type);
    if (!set) this._listeners.set(type, (set = new Set()));
    set.add(fn);
    return () => this.off(type, fn);
  }
  off(type, fn) {
    const set = this._listeners.get(type);
    if (set) set.delete(fn);
  }
  emit(type, ...args) {
    const set = this._listeners.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (e) {
        // A listener's bug must not break the connection or other listeners.
        reportListenerError(e);
      }
    }
  }
}

/** Calls an application handler (when given), reporting what it throws. */
export function call(fn, arg) {
  if (!fn) return;
  try {
    fn(arg);
  } catch (e) {
    reportListenerError(e);
  }
}

function reportListenerError(e) {
  if (typeof console !== 'undefined') console.error('[herald] listener threw', e);
}
