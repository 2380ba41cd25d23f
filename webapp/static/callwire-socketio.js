/*
 * callwire-socketio.js: the Socket.IO companion of callwire.js (docs/protocol.md section 9).
 *
 * Needs the official socket.io-client browser bundle loaded first (the app
 * serves the pinned npm package at /vendor/socket.io.min.js) and callwire.js
 * (for Callwire.CLOSE_CODES). Callwire.SocketIOManager has the same interface
 * as Callwire.WebSocketManager: constructor(serverUrl, userId, options),
 * connect(), disconnect(), on(type, fn) with the events state, connected,
 * reset, event, message, authenticated, close and error.
 *
 * Same behaviour, Socket.IO's way: `auth` is a function, so every reconnect
 * sends a fresh token and the newest lastEventId (resume, nothing missed or
 * repeated); socket.io-client reconnects by itself after a closed transport
 * (server restart, too slow); after a server disconnect (token expired,
 * authentication failed) or a refused connect this client fetches a fresh
 * token and tries again at most maxPolicyRetries times, as callwire.js does
 * after 4001 and 1008.
 */
(function (root) {
  'use strict';

  var EVENT_NAME = 'call.status.changed';
  var Callwire = root.Callwire = root.Callwire || {};

  var DEFAULTS = {
    getToken: null,
    lastEventId: null,
    // Socket.IO's own reconnection: capped exponential backoff with jitter.
    backoffBaseMs: 500,
    backoffCapMs: 30000,
    refreshMarginMs: 60000,
    maxPolicyRetries: 2,
    dedupWindow: 1000,
    // e.g. ['websocket'] to skip long-polling; default: polling, then upgrade.
    transports: undefined,
    debug: false
  };

  class SocketIOManager {
    constructor(serverUrl, userId, options) {
      if (typeof root.io !== 'function') {
        throw new Error('socket.io-client is not loaded: include /vendor/socket.io.min.js first');
      }
      this.options = Object.assign({}, DEFAULTS, options || {});
      this.serverUrl = serverUrl || '/';
      this.userId = userId || null;
      this.getToken = this.options.getToken;
      this.lastEventId = this.options.lastEventId || null;
      this.user = null;
      this.state = 'idle';
      this.expiresAt = null;
      this.transport = null;
      this.socket = null;
      this._listeners = {};
      this._seen = new Set();
      this._policyFailures = 0;
      this._busyRetries = 0;
      this._forceFresh = false;
      this._refreshTimer = null;
      this._stopped = false;
    }

    connect() {
      this._stopped = false;
      if (this.socket) {
        this.socket.connect();
        return this;
      }
      var self = this;
      var socket = root.io(this.serverUrl, {
        transports: this.options.transports,
        reconnectionDelay: this.options.backoffBaseMs,
        reconnectionDelayMax: this.options.backoffCapMs,
        randomizationFactor: 0.5,
        // Called before every (re)connect: a fresh token and the newest id.
        auth: function (send) { self._auth().then(send, function (error) {
          self._error('client', 'Could not get a token: ' + describe(error), error);
          send({});
        }); }
      });
      this.socket = socket;
      this._setState('connecting', {});
      socket.on('connect', function () {
        self._setState('initialising', { transport: socket.io.engine.transport.name });
        self.transport = socket.io.engine.transport.name;
        socket.io.engine.once('upgrade', function (t) { self.transport = t.name; });
      });
      socket.on('connected', function (m) { self._onConnected(m); });
      socket.on(EVENT_NAME, function (m) { self._onEvent(m); });
      socket.on('authenticated', function (m) {
        self._emit('authenticated', m);
        self._emit('message', m);
        if (m.expiresAt) self._scheduleRefresh(m.expiresAt);
      });
      socket.on('error', function (m) {
        self._error('server', m && m.message, null);
        self._emit('message', m);
        if (m && /^Token expired/.test(m.message)) self._forceFresh = true;
      });
      socket.onAny(function (name, m) {
        // Test messages and anything else: under the event name they carry.
        if (['connected', EVENT_NAME, 'authenticated', 'error', 'pong'].indexOf(name) === -1) {
          self._emit('message', m);
        }
      });
      socket.on('connect_error', function (error) { self._onConnectError(error); });
      socket.on('disconnect', function (reason) { self._onDisconnect(reason); });
      socket.io.on('reconnect_attempt', function (attempt) {
        self._setState('reconnecting', { attempt: attempt, delayMs: 0 });
      });
      return this;
    }

    disconnect() {
      this._stopped = true;
      this._clearRefresh();
      if (this.socket) {
        this.socket.disconnect();
        this.socket = null;
      }
      this._setState('disconnected', {});
      this._emit('close', { code: 1000, reason: 'client disconnect', wasClean: true, action: 'stop' });
    }

    on(type, fn) {
      (this._listeners[type] = this._listeners[type] || []).push(fn);
      return this;
    }

    off(type, fn) {
      var list = this._listeners[type] || [];
      var at = list.indexOf(fn);
      if (at !== -1) list.splice(at, 1);
      return this;
    }

    // -- identify ------------------------------------------------------------------

    async _auth() {
      var payload = {};
      if (this.userId) payload.userId = this.userId;
      if (typeof this.getToken === 'function') {
        payload.token = await this.getToken(this._forceFresh);
        this._forceFresh = false;
      }
      if (this.lastEventId) payload.lastEventId = this.lastEventId;
      return payload;
    }

    _onConnected(message) {
      this._policyFailures = 0;
      this._busyRetries = 0;
      this.user = message.userId;
      if (message.recovered === false) {
        this.lastEventId = null;
        this._seen.clear();
        this._emit('reset', { reason: 'history-gap', message: message });
      }
      if (message.expiresAt) this._scheduleRefresh(message.expiresAt);
      this._setState('connected', { recovered: message.recovered, userId: message.userId,
        transport: this.transport });
      this._emit('connected', message);
      this._emit('message', message);
    }

    _onEvent(message) {
      if (typeof message.id === 'string') {
        if (this._seen.has(message.id)) return;
        this._seen.add(message.id);
        if (this._seen.size > this.options.dedupWindow) {
          this._seen.delete(this._seen.values().next().value);
        }
        this.lastEventId = message.id;
      }
      this._emit('message', message);
      this._emit('event', message);
    }

    // -- token refresh ------------------------------------------------------------

    _scheduleRefresh(expiresAt) {
      this.expiresAt = expiresAt;
      this._clearRefresh();
      var expires = Date.parse(expiresAt);
      if (typeof this.getToken !== 'function' || !isFinite(expires)) return;
      var remaining = expires - Date.now();
      var margin = Math.min(this.options.refreshMarginMs, remaining / 2);
      this._refreshTimer = setTimeout(this._refresh.bind(this), Math.max(1000, remaining - margin));
    }

    async _refresh() {
      var socket = this.socket;
      try {
        var token = await this.getToken(true);
        if (socket && socket.connected && token) socket.emit('auth', { token: token });
      } catch (error) {
        this._error('client', 'Token refresh failed: ' + describe(error), error);
      }
    }

    _clearRefresh() {
      if (this._refreshTimer) clearTimeout(this._refreshTimer);
      this._refreshTimer = null;
    }

    // -- ends -------------------------------------------------------------------------

    _onConnectError(error) {
      var code = error && error.data && error.data.code;
      if (code === undefined) {
        // The transport failed: socket.io-client retries by itself.
        return;
      }
      this._emit('close', { code: code, reason: error.message, wasClean: true, action: 'refused' });
      this._error('server', error.message, null);
      if (code === 1011 || code === 1012 || code === 1013) {
        // The server cannot serve this now (certificates or Redis unreachable, busy,
        // restarting): retry with backoff for as long as it takes, never give up.
        var ceiling = Math.min(this.options.backoffCapMs,
          this.options.backoffBaseMs * Math.pow(2, 2 + Math.min(this._busyRetries++, 8)));
        this._retryLater(ceiling / 2 + Math.random() * ceiling / 2);
      } else {
        this._retryWithFreshToken(error.message);
      }
    }

    _onDisconnect(reason) {
      this._clearRefresh();
      if (this._stopped) return;
      if (reason === 'io server disconnect') {
        // Authentication failed or the token expired: not retried blindly.
        this._emit('close', { code: this._forceFresh ? 4001 : 1008, reason: reason,
          wasClean: true, action: 'fresh-token' });
        this._retryWithFreshToken(reason);
        return;
      }
      // Transport closed (restart, too slow, network): socket.io-client reconnects.
      this._emit('close', { code: 1006, reason: reason, wasClean: false, action: 'restart' });
      this._setState('reconnecting', { attempt: 1, delayMs: 0, reason: reason });
    }

    _retryWithFreshToken(why) {
      if (typeof this.getToken !== 'function' ||
          ++this._policyFailures > this.options.maxPolicyRetries) {
        this._setState('stopped', { reason: why });
        return;
      }
      this._forceFresh = true;
      this._retryLater(0);
    }

    _retryLater(delayMs) {
      var self = this;
      this._setState('reconnecting', { attempt: this._policyFailures, delayMs: delayMs });
      setTimeout(function () {
        if (!self._stopped && self.socket) self.socket.connect();
      }, delayMs);
    }

    // -- plumbing ------------------------------------------------------------------------

    _emit(type, detail) {
      (this._listeners[type] || []).slice().forEach(function (fn) {
        try {
          fn(detail);
        } catch (error) {
          setTimeout(function () { throw error; }, 0);
        }
      });
    }

    _setState(state, detail) {
      var previous = this.state;
      this.state = state;
      if (this.options.debug) console.debug('[callwire-socketio]', previous, '->', state, detail);
      this._emit('state', Object.assign({ state: state, previous: previous }, detail));
    }

    _error(source, text, error) {
      this._emit('error', { source: source, message: text, error: error || null });
    }
  }

  function describe(error) {
    return error && error.message ? error.message : String(error);
  }

  Callwire.SocketIOManager = SocketIOManager;
})(typeof window !== 'undefined' ? window : globalThis);
