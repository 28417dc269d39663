// A Node.js TLS client whose 'secureConnect' handler (run by Node inside the OpenSSL call that
// completes the handshake) writes a cleartext HTTP request on another, plain connection: a
// syscall on a tracked socket nested in an OpenSSL call that is not that call's socket.
// Connects to the plain HTTP server at 127.0.0.1:PLAIN_PORT and sends GET /ok?step=1; opens
// TLS to 127.0.0.1:TLS_PORT (tls_node_server.js) and, in 'secureConnect', sends GET
// /ok?step=2 on the plain connection; then, from a timer, GET /r/7 over TLS; then GET
// /ok?step=3 on the plain connection. Prints `done` and exits 0 when all four answered 200
// (and /r/7 with body 7).
// Usage: node tls_node_nested.js TLS_PORT PLAIN_PORT
'use strict';
const net = require('net');
const path = require('path');
const tls = require('tls');
const { reader } = require(path.join(__dirname, 'http1_reader.js'));

const [tlsPort, plainPort] = process.argv.slice(2).map(Number);

function fail(what) {
  console.error(what);
  process.exit(1);
}

const plainHead = (step) => `GET /ok?step=${step} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`;

const plain = net.connect(plainPort, '127.0.0.1', async () => {
  const p = reader(plain);
  const first = await p.request(plainHead(1));
  if (first.status !== 200) fail('step 1: ' + first.status);
  let second = null;
  const secure = new Promise((resolve) => {
    const t = tls.connect({
      port: tlsPort,
      host: '127.0.0.1',
      servername: 'localhost',
      rejectUnauthorized: false,
    });
    t.on('secureConnect', () => {
      // Inside Node's OpenSSL call: a write on the plain connection.
      second = p.request(plainHead(2));
      resolve(t);
    });
    t.on('error', (e) => fail('tls: ' + e));
  });
  const t = await secure;
  const r2 = await second;
  if (r2.status !== 200) fail('step 2: ' + r2.status);
  const tr = reader(t);
  const r7 = await new Promise((resolve) =>
    setTimeout(
      () =>
        resolve(tr.request('GET /r/7 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n')),
      10,
    ),
  );
  if (r7.status !== 200 || r7.body !== '7') fail('/r/7: ' + JSON.stringify(r7));
  const r3 = await p.request(plainHead(3));
  if (r3.status !== 200) fail('step 3: ' + r3.status);
  t.destroy();
  plain.destroy();
  console.log('done');
  process.exit(0);
});
plain.on('error', (e) => fail('plain: ' + e));
