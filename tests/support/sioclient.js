// A real socket.io-client (the npm package, pinned by package-lock.json), driven by pytest.
//
// Commands arrive as JSON lines on stdin; everything the client sees leaves as
// JSON lines on stdout (tests/support/sioclient.py reads them). One process
// holds one client, like one browser tab.
//
//   {"op":"connect","url":…,"options":{…},"auth":{…},"authFunction":true}
//       authFunction: `auth` is a function that sends the newest lastEventId
//       received (as callwire-socketio.js does), so each reconnect resumes.
//   {"op":"emit","event":…,"args":[…],"ack":true}  -> {"type":"ack",…} if ack
//   {"op":"setAuth","auth":{…}}                    replace the auth payload
//   {"op":"dropTransport"}                          close the transport (not the socket)
//   {"op":"pause"} / {"op":"resume"}                stop / restart reading the WebSocket
//   {"op":"disconnect"}                             socket.disconnect()
//   {"op":"exit"}
'use strict';

const { io } = require('socket.io-client');
const readline = require('readline');

let socket = null;
let authPayload = {};
let newestId = null;

function out(message) {
  process.stdout.write(JSON.stringify(message) + '\n');
}

function transportInfo() {
  const engine = socket && socket.io.engine;
  const transport = engine && engine.transport;
  const info = { transport: transport ? transport.name : null };
  if (transport && transport.name === 'websocket' && transport.ws) {
    // Node's `ws` offers permessage-deflate as browsers do; this is what the server accepted.
    info.extensions = transport.ws.extensions || '';
  }
  return info;
}

function connect(command) {
  authPayload = command.auth || {};
  const options = Object.assign({ reconnectionDelay: 100, reconnectionDelayMax: 500 }, command.options || {});
  if (command.authFunction) {
    options.auth = (cb) => {
      const payload = Object.assign({}, authPayload);
      if (newestId !== null) payload.lastEventId = newestId;
      cb(payload);
    };
  } else if (command.auth !== undefined && command.auth !== null) {
    options.auth = command.auth;
  }
  socket = io(command.url, options);
  socket.io.on('open', () => {
    // The Engine.IO connection is open (first transport); an upgrade may follow.
    out(Object.assign({ type: 'open' }, transportInfo()));
    socket.io.engine.once('upgrade', (transport) => {
      out(Object.assign({ type: 'upgrade', name: transport.name }, transportInfo()));
    });
  });
  socket.on('connect', () => {
    out(Object.assign({ type: 'connect', id: socket.id }, transportInfo()));
  });
  socket.on('connect_error', (err) => {
    out({ type: 'connect_error', message: err.message, data: err.data === undefined ? null : err.data });
  });
  socket.on('disconnect', (reason) => out({ type: 'disconnect', reason }));
  socket.io.on('reconnect_attempt', (attempt) => out({ type: 'reconnect_attempt', attempt }));
  socket.onAny((name, ...args) => {
    const first = args[0];
    if (first && typeof first === 'object' && typeof first.id === 'string') newestId = first.id;
    out({ type: 'event', name, args });
  });
}

function underlyingSocket() {
  const transport = socket.io.engine.transport;
  return transport && transport.ws && transport.ws._socket;
}

function handle(command) {
  switch (command.op) {
    case 'connect':
      connect(command);
      break;
    case 'emit':
      if (command.ack) {
        socket.emit(command.event, ...(command.args || []), (...answer) => {
          out({ type: 'ack', event: command.event, args: answer });
        });
      } else {
        socket.emit(command.event, ...(command.args || []));
      }
      break;
    case 'setAuth':
      authPayload = command.auth || {};
      break;
    case 'dropTransport':
      socket.io.engine.close();
      break;
    case 'pause': {
      const raw = underlyingSocket();
      if (raw) raw.pause();
      out({ type: 'paused', ok: Boolean(raw) });
      break;
    }
    case 'resume': {
      const raw = underlyingSocket();
      if (raw) raw.resume();
      out({ type: 'resumed', ok: Boolean(raw) });
      break;
    }
    case 'disconnect':
      socket.disconnect();
      break;
    case 'exit':
      if (socket) socket.disconnect();
      process.exit(0);
      break;
    default:
      out({ type: 'failure', message: `unknown op ${command.op}` });
  }
}

out({ type: 'ready' });
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (!line.trim()) return;
  try {
    handle(JSON.parse(line));
  } catch (err) {
    out({ type: 'failure', message: String(err && err.stack || err) });
  }
}).on('close', () => process.exit(0));
