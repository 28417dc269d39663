#!/usr/bin/env node
// Node's built-in http2 (cleartext, prior knowledge: h2c), server and client, no dependencies.
//
//   node h2_peer.js serve [--port 0]
//       Listens on 127.0.0.1 and prints `listening PORT` once it accepts connections.
//       GET /hello... -> 200 "hello\n"; /status/NNN -> NNN; POST /echo -> 200 with the body;
//       anything else -> 404.
//   node h2_peer.js client --port P [--concurrent] REQUEST...
//       Sends the requests on ONE session (one HTTP/2 connection), in order, or all at once with
//       --concurrent, then prints {"pid", "local_port", "responses": [{"path", "status",
//       "body_len"}]} as one JSON line. REQUEST is `GET:/path` or `POST:/path:N` (N body bytes).
'use strict';

const http2 = require('http2');

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

function serve() {
  const port = Number(arg('--port', '0'));
  const server = http2.createServer();
  server.on('stream', (stream, headers) => {
    const path = headers[':path'] || '/';
    const method = headers[':method'];
    const chunks = [];
    stream.on('data', (c) => chunks.push(c));
    stream.on('end', () => {
      const status = path.match(/^\/status\/(\d{3})/);
      if (method === 'POST' && path.startsWith('/echo')) {
        const body = Buffer.concat(chunks);
        stream.respond({ ':status': 200, 'content-type': 'application/octet-stream' });
        stream.end(body);
      } else if (status) {
        stream.respond({ ':status': Number(status[1]), 'content-type': 'text/plain' });
        stream.end('status\n');
      } else if (path.startsWith('/hello')) {
        stream.respond({ ':status': 200, 'content-type': 'text/plain' });
        stream.end('hello\n');
      } else {
        stream.respond({ ':status': 404, 'content-type': 'text/plain' });
        stream.end('not found\n');
      }
    });
    stream.on('error', () => {});
  });
  server.listen(port, '127.0.0.1', () => {
    console.log(`listening ${server.address().port}`);
  });
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

function request(session, spec) {
  const [method, path, size] = spec.split(':');
  return new Promise((resolve, reject) => {
    const headers = { ':method': method, ':path': path };
    const req = session.request(headers, { endStream: method !== 'POST' });
    let status = 0;
    let bodyLen = 0;
    req.on('response', (h) => {
      status = h[':status'];
    });
    req.on('data', (c) => {
      bodyLen += c.length;
    });
    req.on('end', () => resolve({ path, status, body_len: bodyLen }));
    req.on('error', reject);
    if (method === 'POST') {
      req.end(Buffer.alloc(Number(size || '0'), 'b'));
    }
  });
}

async function client() {
  const port = Number(arg('--port', '0'));
  const concurrent = process.argv.includes('--concurrent');
  const specs = process.argv
    .slice(3)
    .filter((a, i, all) => a !== '--concurrent' && a !== '--port' && all[i - 1] !== '--port');
  const session = http2.connect(`http://127.0.0.1:${port}`);
  session.on('error', (e) => {
    console.error(`session error: ${e}`);
    process.exit(1);
  });
  await new Promise((resolve) => session.on('connect', resolve));
  const localPort = session.socket.localPort;
  let responses;
  if (concurrent) {
    responses = await Promise.all(specs.map((s) => request(session, s)));
  } else {
    responses = [];
    for (const s of specs) {
      responses.push(await request(session, s));
    }
  }
  session.close();
  console.log(JSON.stringify({ pid: process.pid, local_port: localPort, responses }));
}

const command = process.argv[2];
if (command === 'serve') {
  serve();
} else if (command === 'client') {
  client().catch((e) => {
    console.error(`client failed: ${e}`);
    process.exit(1);
  });
} else {
  console.error('usage: h2_peer.js serve|client ...');
  process.exit(2);
}
