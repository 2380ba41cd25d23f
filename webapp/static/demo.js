/*
 * The demo page: connects with callwire.js and shows the connection, the
 * user and a live list of their calls. Development mode mints emulator
 * tokens (POST /dev/token) and plays sample calls (POST /dev/sample-call);
 * otherwise the token comes from window.callwireGetToken, set by the page's
 * own Firebase sign-in (docs/browser-client.md).
 */
(function () {
  'use strict';

  var EVENT_NAME = 'call.status.changed';
  var STEPS = ['initiated', 'ringing', 'in-progress'];
  var TERMINAL = { ended: true, failed: true };
  var RANK = { initiated: 0, ringing: 1, 'in-progress': 2, ended: 3, failed: 3 };
  var MAX_ACTIVITY = 100;

  var body = document.body;
  var development = body.dataset.development === 'true';
  var $ = function (id) { return document.getElementById(id); };
  var showError = window.callwireShowError || function (text) { console.error(text); };

  /** What tests and curious developers can inspect from the console. */
  var demo = {
    client: null,
    getToken: null,
    calls: new Map(),
    closes: [],
    start: start,
    stop: stop
  };
  window.callwireDemo = demo;

  // -- connecting -----------------------------------------------------------

  function start(getToken) {
    if (typeof getToken !== 'function') {
      throw new TypeError('callwireDemo.start needs a getToken(forceRefresh) function');
    }
    stop();
    clearCalls();
    demo.getToken = getToken;
    var Manager = body.dataset.transport === 'socket.io'
      ? Callwire.SocketIOManager : Callwire.WebSocketManager;
    var client = new Manager('/', null, { getToken: getToken });
    demo.client = client;
    client.on('state', renderState);
    client.on('connected', onConnected);
    client.on('reset', onReset);
    client.on('event', onEvent);
    client.on('message', onOtherMessage);
    client.on('authenticated', function (m) {
      addActivity('auth', 'Token refreshed, valid until ' + formatTime(m.expiresAt));
    });
    client.on('close', onClose);
    client.on('error', function (e) {
      showError((e.source === 'server' ? 'Server says: ' : '') + e.message);
    });
    client.connect();
    return client;
  }

  function stop() {
    if (demo.client) {
      demo.client.disconnect();
      demo.client = null;
    }
  }

  function devTokenSource(email) {
    var cached = null;
    return async function getToken(forceRefresh) {
      var fresh = cached && Date.parse(cached.expiresAt) - Date.now() > 5 * 60 * 1000;
      if (fresh && !forceRefresh) return cached.token;
      var response = await fetch('/dev/token', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ email: email })
      });
      var answer = await response.json().catch(function () { return {}; });
      if (!response.ok) {
        throw new Error(answer.message || 'POST /dev/token answered ' + response.status);
      }
      cached = answer;
      return answer.token;
    };
  }

  // -- connection state ------------------------------------------------------

  function renderState(s) {
    var text;
    switch (s.state) {
      case 'connecting': text = 'Connecting…'; break;
      case 'initialising': text = 'Signing in…'; break;
      case 'connected': text = 'Connected'; break;
      case 'reconnecting':
        text = 'Reconnecting in ' + (s.delayMs / 1000).toFixed(1) + ' s (attempt ' + s.attempt + ')';
        break;
      case 'disconnected': text = 'Disconnected'; break;
      case 'stopped': text = 'Stopped: ' + s.reason; break;
      default: text = 'Not connected';
    }
    var el = $('state');
    el.textContent = text;
    el.className = 'state state-' + s.state;
    el.dataset.state = s.state;
    var live = s.state !== 'disconnected' && s.state !== 'stopped' && s.state !== 'idle';
    $('disconnect').disabled = !live;
    ['sample-call', 'sample-failed'].forEach(function (id) {
      if ($(id)) $(id).disabled = s.state !== 'connected';
    });
    if (s.state === 'stopped') addActivity('info', 'Stopped: ' + s.reason);
  }

  function onConnected(m) {
    $('user').textContent = m.userId;
    document.querySelectorAll('#curl-snippet .who').forEach(function (el) {
      el.textContent = m.userId;
    });
    var how = m.recovered === true ? ', resumed with nothing missed'
      : m.recovered === false ? ', history gap: showing the current snapshot' : '';
    addActivity('connected', 'Connected as ' + m.userId + how, { recovered: String(m.recovered) });
    renderLastEventId();
  }

  function onClose(c) {
    demo.closes.push(c.code);
    var info = Callwire.CLOSE_CODES[c.code];
    var text = 'Socket closed ' + c.code + (info ? ' (' + info.meaning + ')' : '') +
      (c.reason && (!info || c.reason !== info.meaning) ? ': ' + c.reason : '');
    addActivity('close', text, { code: String(c.code) });
  }

  // -- calls -------------------------------------------------------------------

  function onEvent(m) {
    upsertCall(m.callId, m.status, m.data || {}, m.timestamp, m.id);
    var reason = m.data && m.data.endedReason ? ' (' + m.data.endedReason + ')' : '';
    addActivity('event', 'Call ' + m.callId + ': ' + m.status + reason,
      { callId: m.callId, status: m.status, eventId: m.id || '' });
    renderLastEventId();
  }

  function onOtherMessage(m) {
    if (m.event && m.event !== EVENT_NAME) {
      var data = m.data || {};
      var text = typeof data.message === 'string' ? data.message : JSON.stringify(data.message);
      addActivity('message', 'Message ' + m.event + (data.sender ? ' from ' + data.sender : '') + ': ' + text);
    }
  }

  /** The server's history no longer reaches our last id: re-read each open call's status. */
  function onReset() {
    addActivity('info', 'History gap: re-reading the status of open calls');
    demo.calls.forEach(function (call, callId) {
      if (!TERMINAL[call.status]) refetchCall(callId);
    });
    renderLastEventId();
  }

  async function refetchCall(callId) {
    try {
      var token = await demo.getToken(false);
      var response = await fetch('/api/v6/call/' + encodeURIComponent(callId) + '/status', {
        headers: { Authorization: 'Bearer ' + token }
      });
      if (response.status === 404) {
        markUnknown(callId);
        return;
      }
      var answer = await response.json();
      if (!response.ok) throw new Error(answer.message || 'status ' + response.status);
      var state = answer.data;
      var current = demo.calls.get(callId);
      if (current && current.status !== 'unknown' && RANK[state.status] <= RANK[current.status]) return;
      var event = state.event || {};
      upsertCall(callId, state.status, event.data || {}, state.updatedAt, event.id);
    } catch (error) {
      showError('Could not re-read call ' + callId + ': ' + error.message);
    }
  }

  function markUnknown(callId) {
    var call = demo.calls.get(callId);
    if (!call || TERMINAL[call.status]) return;
    call.status = 'unknown';
    call.reason = 'no longer in the server\'s history';
    renderCall(call);
  }

  function upsertCall(callId, status, data, timestamp, eventId) {
    var call = demo.calls.get(callId);
    if (!call) {
      call = { callId: callId, seen: {}, el: null };
      demo.calls.set(callId, call);
    }
    call.status = status;
    call.seen[status] = true;
    call.reason = data.endedReason || '';
    call.customer = data.customerNumber || call.customer || '';
    call.timestamp = timestamp || new Date().toISOString();
    call.eventId = eventId || '';
    renderCall(call);
  }

  function renderCall(call) {
    var list = $('calls');
    if (!call.el) {
      call.el = document.createElement('li');
      call.el.className = 'call';
      list.insertBefore(call.el, list.firstChild);
      $('no-calls').hidden = true;
    }
    var el = call.el;
    el.dataset.callId = call.callId;
    el.dataset.status = call.status;
    el.textContent = '';
    el.appendChild(span('call-id', call.callId));
    var badge = span('badge badge-' + call.status, call.status);
    badge.setAttribute('aria-label', 'status: ' + call.status);
    el.appendChild(badge);
    var steps = document.createElement('ol');
    steps.className = 'call-steps';
    steps.setAttribute('aria-label', 'progress');
    var last = call.status === 'failed' ? 'failed' : 'ended';
    STEPS.concat([last]).forEach(function (step) {
      var item = document.createElement('li');
      item.textContent = step;
      if (call.seen[step]) item.className = 'done';
      steps.appendChild(item);
    });
    el.appendChild(steps);
    if (call.reason) {
      var label = call.status === 'failed' ? 'Failed: ' : call.status === 'ended' ? 'Ended: ' : '';
      el.appendChild(span('call-reason', label + call.reason));
    }
    var meta = [call.customer, 'updated ' + formatTime(call.timestamp)];
    if (call.eventId) meta.push('event ' + call.eventId);
    el.appendChild(span('call-meta', meta.filter(Boolean).join(' · ')));
  }

  function clearCalls() {
    demo.calls = new Map();
    $('calls').textContent = '';
    $('no-calls').hidden = false;
    $('user').textContent = 'nobody yet';
    renderLastEventId();
  }

  // -- development helpers ------------------------------------------------------------

  async function fireSampleCall(outcome) {
    try {
      var token = await demo.getToken(false);
      var response = await fetch('/dev/sample-call', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + token },
        body: JSON.stringify({ outcome: outcome })
      });
      var answer = await response.json().catch(function () { return {}; });
      if (!response.ok) throw new Error(answer.message || 'status ' + response.status);
      addActivity('info', 'Sample call ' + answer.data.callId + ' started: ' + answer.data.statuses.join(' → '));
    } catch (error) {
      showError('Sample call failed: ' + error.message);
    }
  }

  // -- small helpers ---------------------------------------------------------------------

  function addActivity(kind, text, data) {
    var log = $('activity');
    var item = document.createElement('li');
    item.dataset.kind = kind;
    Object.keys(data || {}).forEach(function (key) { item.dataset[key] = data[key]; });
    var time = document.createElement('time');
    var now = new Date();
    time.dateTime = now.toISOString();
    time.textContent = now.toLocaleTimeString();
    item.appendChild(time);
    item.appendChild(document.createTextNode(text));
    log.appendChild(item);
    while (log.children.length > MAX_ACTIVITY) log.removeChild(log.firstChild);
    log.scrollTop = log.scrollHeight;
  }

  function renderLastEventId() {
    $('last-event-id').textContent = (demo.client && demo.client.lastEventId) || 'none';
  }

  function span(className, text) {
    var el = document.createElement('span');
    el.className = className;
    el.textContent = text;
    return el;
  }

  function formatTime(iso) {
    var date = new Date(iso);
    return isNaN(date) ? String(iso) : date.toLocaleTimeString();
  }

  // -- wiring ---------------------------------------------------------------------------

  $('disconnect').addEventListener('click', function () {
    if (demo.client) demo.client.disconnect();
  });
  window.addEventListener('pagehide', stop);
  document.querySelectorAll('#curl-snippet .origin').forEach(function (el) {
    el.textContent = location.origin;
  });
  // A call id of this page's own, so the pasted snippet never hits another user's call-1.
  document.querySelectorAll('#curl-snippet .call-id').forEach(function (el) {
    el.textContent = 'call-' + Math.random().toString(16).slice(2, 10);
  });

  if (development) {
    $('dev-signin').addEventListener('submit', function (event) {
      event.preventDefault();
      var email = $('email').value.trim();
      start(devTokenSource(email));
    });
    $('sample-call').addEventListener('click', function () { fireSampleCall('ended'); });
    $('sample-failed').addEventListener('click', function () { fireSampleCall('failed'); });
  } else {
    var useHook = function () {
      if (typeof window.callwireGetToken !== 'function') {
        showError('Not signed in: set window.callwireGetToken = (force) => ' +
          'firebase.auth().currentUser.getIdToken(force), then press Connect.');
        return;
      }
      start(window.callwireGetToken);
    };
    $('connect').addEventListener('click', useHook);
    if (typeof window.callwireGetToken === 'function') useHook();
  }
})();
