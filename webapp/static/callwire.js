/*
 * callwire.js: browser client for Callwire call status events.
 *
 * One plain script, no build step, no dependencies. It keeps the interface of
 * the seed's WebSocketManager (constructor(serverUrl, userId), connect,
 * disconnect, handleMessage, handleCallStatusUpdate and the show* hooks), so a
 * page written against the seed switches by loading this file instead of its
 * pasted class. What it adds: a Firebase ID token in init and its refresh
 * before expiry, resume with lastEventId, capped full-jitter backoff, a
 * jittered reconnect after a server restart, no blind retries on policy
 * closes, an application ping when the socket is idle, dedup by event id and
 * a disconnect() that stays disconnected. Docs: docs/browser-client.md.
 */
(function (root) {
  'use strict';

  var VERSION = '1.0.0';
  var EVENT_NAME = 'call.status.changed';

  /*
   * Close codes of docs/protocol.md section 5 and what the client does about each:
   *   stop        - do not reconnect
   *   fresh-token - reconnect only with a freshly fetched token (needs getToken)
   *   restart     - server restarting: reconnect soon, jittered, and resume
   *   backoff     - reconnect with capped exponential full-jitter backoff
   */
  var CLOSE_CODES = {
    1000: { meaning: 'normal close', advice: 'stop', action: 'stop' },
    1008: {
      meaning: 'policy: authentication failed, init timeout, too many connections',
      advice: 'fix the cause, not retry blindly',
      action: 'fresh-token'
    },
    1009: { meaning: 'frame too large', advice: 'fix the client', action: 'stop' },
    1011: { meaning: 'internal error', advice: 'retry with backoff', action: 'backoff' },
    1012: { meaning: 'server restarting', advice: 'reconnect now, resume', action: 'restart' },
    1013: {
      meaning: 'try again later: service busy or Redis unreachable',
      advice: 'retry with backoff, resume',
      action: 'backoff'
    },
    4001: { meaning: 'token expired', advice: 'get a fresh token, reconnect', action: 'fresh-token' },
    4008: {
      meaning: 'too slow to keep up',
      advice: 'reconnect, resume with lastEventId',
      action: 'backoff'
    }
  };

  /** Return what to do after a close with `code` (unknown codes, 1006 included: backoff). */
  function closeAction(code) {
    var known = CLOSE_CODES[code];
    return known ? known.action : 'backoff';
  }

  /** Full-jitter backoff: a random delay in [0, min(cap, base * 2^attempt)). */
  function backoffDelay(attempt, baseMs, capMs, random) {
    var ceiling = Math.min(capMs, baseMs * Math.pow(2, Math.max(0, attempt)));
    return Math.floor((random || Math.random)() * ceiling);
  }

  /** Turn '/', '/ws' or 'ws://...' into an absolute ws(s):// URL. */
  function resolveUrl(serverUrl) {
    if (/^wss?:\/\//i.test(serverUrl) || typeof root.location === 'undefined') {
      return serverUrl;
    }
    var url = new URL(serverUrl || '/', root.location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    return url.href;
  }

  /** Report an error thrown by a listener without breaking the caller (window.onerror sees it). */
  function reportAsync(error) {
    if (typeof root.reportError === 'function') {
      root.reportError(error);
    } else {
      setTimeout(function () { throw error; }, 0);
    }
  }

  var DEFAULTS = {
    // async (forceRefresh: boolean) => Firebase ID token; omit for legacy userId-only init.
    getToken: null,
    // Resume from this id on the first connect (the client then tracks it itself).
    lastEventId: null,
    backoffBaseMs: 500,
    backoffCapMs: 30000,
    // After 1012 (server restart) reconnect within a random [0, restartWindowMs).
    restartWindowMs: 2000,
    maxReconnectAttempts: Infinity,
    // Send {"type":"ping"} after this long without any message; give up on the
    // socket if nothing arrives within pongTimeoutMs after that.
    idlePingMs: 20000,
    pongTimeoutMs: 10000,
    // Refresh the token this long before it expires (at most half its remaining life).
    refreshMarginMs: 60000,
    // Consecutive 1008 closes (each retried with a fresh token) before giving up.
    maxPolicyRetries: 2,
    // How many event ids to remember for dedup.
    dedupWindow: 1000,
    debug: false
  };

  /**
   * The seed's WebSocketManager, made robust. Seed usage works unchanged:
   *   new WebSocketManager('ws://host:3000', 'user@example.com').connect()
   * Token mode adds a third argument: { getToken: (force) => user.getIdToken(force) }.
   */
  class WebSocketManager {
    constructor(serverUrl, userId, options) {
      this.options = Object.assign({}, DEFAULTS, options || {});
      this.serverUrl = resolveUrl(serverUrl);
      this.userId = userId || null;
      this.ws = null;
      this.reconnectAttempts = 0;
      this.maxReconnectAttempts = this.options.maxReconnectAttempts;
      this.getToken = this.options.getToken;
      this.lastEventId = this.options.lastEventId || null;
      /** The normalised user id the server confirmed, once connected. */
      this.user = null;
      /** idle, connecting, initialising, connected, reconnecting, disconnected, stopped */
      this.state = 'idle';
      /** ISO time the current token expires, as the server reported it. */
      this.expiresAt = null;
      this._listeners = {};
      this._seen = new Set();
      this._stopped = true;
      this._generation = 0;
      this._policyFailures = 0;
      this._timers = {};
      this._token = null;
      this._onOnline = this._onOnline.bind(this);
    }

    // -- the seed's interface ------------------------------------------------

    /** Open the connection (idempotent); reconnects by itself until disconnect(). */
    connect() {
      if (!this._stopped && this.state !== 'stopped') {
        return;
      }
      this._stopped = false;
      this._policyFailures = 0;
      this.reconnectAttempts = 0;
      if (typeof root.addEventListener === 'function') {
        root.addEventListener('online', this._onOnline);
      }
      this._open(false);
    }

    /** Close for good: no reconnect until connect() is called again. */
    disconnect() {
      this._stopped = true;
      this._generation += 1;
      this._clearTimers();
      if (typeof root.removeEventListener === 'function') {
        root.removeEventListener('online', this._onOnline);
      }
      var ws = this.ws;
      this.ws = null;
      if (ws) {
        // Detach first: a connect() right after must not see this socket's close.
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        if (ws.readyState < 2) {
          ws.close(1000, 'client disconnect');
          this._emit('close', { code: 1000, reason: 'client disconnect', wasClean: true, action: 'stop' });
        }
      }
      this._setState('disconnected', {});
    }

    /** Reconnect with backoff unless a socket is open (the seed's method, kept for compatibility). */
    reconnect() {
      if (!this.ws) this._scheduleReconnect({});
    }

    /** Route a message the client did not consume itself; override freely. */
    handleMessage(message) {
      switch (message.type) {
        case 'connected':
          this._log('connected as', message.userId);
          break;
        case 'error':
          console.error('Callwire error:', message.message);
          break;
        default:
          if (message.event === EVENT_NAME) {
            this.handleCallStatusUpdate(message);
          }
      }
    }

    /** Call the show* hook for the event's status. */
    handleCallStatusUpdate(message) {
      var reason = message.data ? message.data.endedReason : undefined;
      switch (message.status) {
        case 'initiated':
          this.showCallInitiated(message.callId, message);
          break;
        case 'ringing':
          this.showCallRinging(message.callId, message);
          break;
        case 'in-progress':
          this.showCallInProgress(message.callId, message);
          break;
        case 'ended':
          this.showCallEnded(message.callId, reason, message);
          break;
        case 'failed':
          this.showCallFailed(message.callId, reason, message);
          break;
        default:
          console.warn('Callwire: unknown call status', message.status);
      }
    }

    // Hooks for the page to override (or use on('event', fn) instead).
    showCallInitiated(callId, message) {}
    showCallRinging(callId, message) {}
    showCallInProgress(callId, message) {}
    showCallEnded(callId, endedReason, message) {}
    showCallFailed(callId, endedReason, message) {}

    // -- events ---------------------------------------------------------------

    /**
     * Listen to: state, connected, reset, event, message, authenticated, close, error.
     * Returns a function that removes the listener.
     */
    on(type, fn) {
      (this._listeners[type] = this._listeners[type] || []).push(fn);
      var self = this;
      return function () { self.off(type, fn); };
    }

    off(type, fn) {
      var list = this._listeners[type];
      if (list) {
        this._listeners[type] = list.filter(function (item) { return item !== fn; });
      }
    }

    _emit(type, detail) {
      var list = (this._listeners[type] || []).slice();
      for (var i = 0; i < list.length; i++) {
        try {
          list[i].call(this, detail);
        } catch (error) {
          reportAsync(error);
        }
      }
    }

    // -- opening ---------------------------------------------------------------

    async _open(forceToken) {
      var generation = ++this._generation;
      this._setState('connecting', { attempt: this.reconnectAttempts });
      var token = null;
      if (typeof this.getToken === 'function') {
        try {
          token = await this.getToken(Boolean(forceToken));
        } catch (error) {
          if (generation !== this._generation) return;
          this._error('client', 'Could not get a token: ' + describe(error), error);
          this._scheduleReconnect({ forceToken: forceToken, code: null });
          return;
        }
        if (generation !== this._generation) return;
        if (!token) {
          this._stop('no token: getToken returned nothing (signed out?)', null);
          return;
        }
      } else if (!this.userId) {
        this._stop('no userId and no getToken: nothing to identify with', null);
        return;
      }
      this._token = token;
      var ws;
      try {
        ws = new WebSocket(this.serverUrl);
      } catch (error) {
        this._error('client', 'Bad server URL ' + this.serverUrl + ': ' + describe(error), error);
        this._stop('bad server URL', null);
        return;
      }
      this.ws = ws;
      var self = this;
      ws.onopen = function () {
        if (self.ws !== ws) return;
        self._setState('initialising', {});
        self._sendInit();
        self._armIdle();
      };
      ws.onmessage = function (event) {
        if (self.ws !== ws) return;
        self._onFrame(event.data);
      };
      ws.onclose = function (event) {
        if (self.ws !== ws) return;
        self._onClose(event.code, event.reason, event.wasClean);
      };
      ws.onerror = function () {
        // A close event always follows; browsers hide the cause on purpose.
      };
    }

    _sendInit() {
      var payload = {};
      if (this.userId) payload.userId = this.userId;
      if (this._token) payload.token = this._token;
      if (this.lastEventId) payload.lastEventId = this.lastEventId;
      this._send({ type: 'init', payload: payload });
    }

    _send(message) {
      var ws = this.ws;
      if (ws && ws.readyState === 1) {
        ws.send(JSON.stringify(message));
        return true;
      }
      return false;
    }

    // -- receiving -------------------------------------------------------------

    _onFrame(data) {
      this._armIdle();
      var message;
      try {
        message = JSON.parse(data);
      } catch (error) {
        this._error('client', 'Unreadable frame from the server: ' + String(data).slice(0, 80), error);
        return;
      }
      if (!message || typeof message !== 'object') {
        this._error('client', 'Unexpected frame from the server: ' + String(data).slice(0, 80), null);
        return;
      }
      if (!this._track(message)) return;
      // Errors thrown by handleMessage or the show* hooks are not caught here:
      // they reach window.onerror like any other page error.
      this.handleMessage(message);
    }

    /** Update the client's own state; return false for messages the page must not see. */
    _track(message) {
      switch (message.type) {
        case 'connected':
          this._onConnected(message);
          this._emit('message', message);
          return true;
        case 'authenticated':
          this._onAuthenticated(message);
          this._emit('message', message);
          return false;
        case 'pong':
          return false;
        case 'error':
          this._error('server', message.message, null);
          this._emit('message', message);
          return true;
      }
      if (message.event === EVENT_NAME && typeof message.id === 'string') {
        if (this._seen.has(message.id)) {
          this._log('duplicate event dropped', message.id);
          return false;
        }
        this._remember(message.id);
        this.lastEventId = message.id;
      }
      this._emit('message', message);
      if (message.event === EVENT_NAME) {
        this._emit('event', message);
      }
      return true;
    }

    _remember(id) {
      this._seen.add(id);
      if (this._seen.size > this.options.dedupWindow) {
        this._seen.delete(this._seen.values().next().value);
      }
    }

    _onConnected(message) {
      this.reconnectAttempts = 0;
      this._policyFailures = 0;
      this.user = message.userId;
      if (message.recovered === false) {
        // History no longer reaches back to our id: what follows is the
        // snapshot, and it is the truth. Forget what we knew.
        this.lastEventId = null;
        this._seen.clear();
        this._emit('reset', { reason: 'history-gap', message: message });
      }
      if (message.expiresAt) {
        this._scheduleRefresh(message.expiresAt, false);
      }
      this._setState('connected', { recovered: message.recovered, userId: message.userId });
      this._emit('connected', message);
    }

    // -- token refresh ------------------------------------------------------------

    _scheduleRefresh(expiresAt, afterRefresh) {
      var previous = afterRefresh && this.expiresAt ? Date.parse(this.expiresAt) : 0;
      var expires = Date.parse(expiresAt);
      this.expiresAt = expiresAt;
      this._clearTimer('refresh');
      if (typeof this.getToken !== 'function' || !isFinite(expires)) return;
      if (previous && expires <= previous) {
        // A refresh that did not extend the token: let the server close with
        // 4001 and reconnect with a forced fresh token rather than spin.
        this._error('client', 'Token refresh did not extend the token (expires ' + expiresAt + ')', null);
        return;
      }
      var remaining = expires - Date.now();
      var margin = Math.min(this.options.refreshMarginMs, remaining / 2);
      this._setTimer('refresh', Math.max(1000, remaining - margin), this._refresh.bind(this));
    }

    async _refresh() {
      var generation = this._generation;
      var token;
      try {
        token = await this.getToken(true);
      } catch (error) {
        if (generation !== this._generation) return;
        this._error('client', 'Token refresh failed: ' + describe(error), error);
        var left = Date.parse(this.expiresAt) - Date.now();
        if (left > 2000) {
          this._setTimer('refresh', Math.min(10000, left / 2), this._refresh.bind(this));
        }
        return;
      }
      if (generation !== this._generation || !token) return;
      this._token = token;
      this._send({ type: 'auth', payload: { token: token } });
    }

    _onAuthenticated(message) {
      this._emit('authenticated', message);
      if (message.expiresAt) this._scheduleRefresh(message.expiresAt, true);
    }

    // -- idle ping -----------------------------------------------------------------

    _armIdle() {
      this._clearTimer('pong');
      this._setTimer('idle', this.options.idlePingMs, this._onIdle.bind(this));
    }

    _onIdle() {
      if (!this._send({ type: 'ping' })) return;
      this._setTimer('pong', this.options.pongTimeoutMs, this._onDeadLink.bind(this));
    }

    _onDeadLink() {
      var ws = this.ws;
      if (!ws) return;
      this._error(
        'client',
        'No answer to ping within ' + this.options.pongTimeoutMs + ' ms: connection presumed dead',
        null
      );
      // A dead link never completes the close handshake: stop listening to
      // this socket and reconnect as if it had dropped.
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(4000, 'no answer to ping');
      } catch (error) {
        // Closing a dead socket may throw in some browsers; it is gone either way.
      }
      this._onClose(1006, 'no answer to ping', false);
    }

    // -- closing and reconnecting ----------------------------------------------------

    _onClose(code, reason, wasClean) {
      this.ws = null;
      this._clearTimer('idle');
      this._clearTimer('pong');
      this._clearTimer('refresh');
      var action = closeAction(code);
      var info = CLOSE_CODES[code];
      this._emit('close', {
        code: code,
        reason: reason || (info ? info.meaning : ''),
        wasClean: wasClean,
        action: this._stopped ? 'stop' : action
      });
      if (this._stopped) return;
      var why = code + (info ? ' (' + info.meaning + ')' : '') + (reason ? ': ' + reason : '');
      if (action === 'stop') {
        this._stop(why, code);
      } else if (action === 'fresh-token') {
        if (typeof this.getToken !== 'function') {
          this._stop(why + '; no getToken to fetch a fresh token', code);
          return;
        }
        if (code === 1008) {
          this._policyFailures += 1;
          if (this._policyFailures > this.options.maxPolicyRetries) {
            this._stop(why + '; still refused with a fresh token', code);
            return;
          }
        }
        this._scheduleReconnect({ forceToken: true, code: code });
      } else if (action === 'restart') {
        this._scheduleReconnect({ windowMs: this.options.restartWindowMs, code: code });
      } else {
        this._scheduleReconnect({ code: code });
      }
    }

    _scheduleReconnect(how) {
      if (this._stopped) return;
      if (this.reconnectAttempts >= this.maxReconnectAttempts) {
        this._stop('gave up after ' + this.reconnectAttempts + ' attempts', how.code);
        return;
      }
      var attempt = this.reconnectAttempts;
      this.reconnectAttempts += 1;
      var delay = how.windowMs
        ? Math.floor(Math.random() * how.windowMs)
        : backoffDelay(attempt, this.options.backoffBaseMs, this.options.backoffCapMs);
      this._setState('reconnecting', {
        delayMs: delay,
        attempt: this.reconnectAttempts,
        code: how.code
      });
      var self = this;
      this._setTimer('reconnect', delay, function () {
        self._open(Boolean(how.forceToken));
      });
    }

    _onOnline() {
      // The browser says the network is back: do not wait out a long backoff.
      if (this.state === 'reconnecting' && this._timers.reconnect) {
        var self = this;
        this._setTimer('reconnect', backoffDelay(0, this.options.backoffBaseMs, this.options.backoffCapMs), function () {
          self._open(false);
        });
      }
    }

    _stop(why, code) {
      this._generation += 1;
      this._clearTimers();
      if (typeof root.removeEventListener === 'function') {
        root.removeEventListener('online', this._onOnline);
      }
      this._setState('stopped', { reason: why, code: code });
    }

    // -- small helpers -------------------------------------------------------------------

    _setState(state, detail) {
      var previous = this.state;
      this.state = state;
      this._log('state', previous, '->', state, detail);
      this._emit('state', Object.assign({ state: state, previous: previous }, detail));
    }

    _error(source, text, error) {
      this._emit('error', { source: source, message: text, error: error || null });
    }

    _setTimer(name, delay, fn) {
      this._clearTimer(name);
      var self = this;
      this._timers[name] = setTimeout(function () {
        delete self._timers[name];
        fn();
      }, delay);
    }

    _clearTimer(name) {
      if (this._timers[name] !== undefined) {
        clearTimeout(this._timers[name]);
        delete this._timers[name];
      }
    }

    _clearTimers() {
      for (var name in this._timers) {
        clearTimeout(this._timers[name]);
      }
      this._timers = {};
    }

    _log() {
      if (this.options.debug) {
        console.debug.apply(console, ['[callwire]'].concat(Array.prototype.slice.call(arguments)));
      }
    }
  }

  function describe(error) {
    return error && error.message ? error.message : String(error);
  }

  var api = {
    VERSION: VERSION,
    WebSocketManager: WebSocketManager,
    CLOSE_CODES: CLOSE_CODES,
    closeAction: closeAction,
    backoffDelay: backoffDelay
  };
  root.Callwire = api;
  // The seed's global name, so `new WebSocketManager(url, userId)` keeps working.
  root.WebSocketManager = WebSocketManager;
  if (typeof module === 'object' && module && module.exports) {
    module.exports = api;
  }
})(typeof window !== 'undefined' ? window : globalThis);
