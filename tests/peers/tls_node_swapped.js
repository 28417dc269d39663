// Node.js HTTPS server and TLS client in one process, the client's two connections over
// JavaScript streams that defer each ciphertext write to the next turn of the event loop
// (tls_node_deferred.js): from a timer (outside any read), connection 2 writes GET /r/B, a
// write to /dev/null follows, then connection 1 writes GET /r/A of the same length. The next
// socket write after A's SSL_write is B's ciphertext, on the other connection, ending in a
// record of exactly A's size. Serves as tls_node_server.js on 127.0.0.1:PORT; once the file
// GO exists, runs ROUNDS such rounds (A = 10 + 2 * round, B = A + 1), each after the last
// answered; prints `done`, keeps its connections open until the file GO.end exists, and exits
// 0 when every response was 200 with its own id.
// Usage: node tls_node_swapped.js PORT CERT KEY ROUNDS GO
'use strict';
const fs = require('fs');
const net = require('net');
const path = require('path');
const tls = require('tls');
const { serve } = require(path.join(__dirname, 'tls_node_server.js'));
const { Deferred, waitForFile } = require(path.join(__dirname, 'tls_node_deferred.js'));
const { reader } = require(path.join(__dirname, 'http1_reader.js'));

const [port, cert, key, rounds, go] = process.argv.slice(2);

function connect() {
  return new Promise((resolve, reject) => {
    const t = tls.connect({
      socket: new Deferred(net.connect(Number(port), '127.0.0.1')),
      servername: 'localhost',
      rejectUnauthorized: false,
    });
    t.on('secureConnect', () => resolve(t));
    t.on('error', reject);
  });
}

const head = (id) => `GET /r/${id} HTTP/1.1\r\nHost: localhost\r\n\r\n`;

serve(Number(port), cert, key, async (server) => {
  console.log('listening');
  await waitForFile(go);
  const c1 = reader(await connect());
  const c2 = reader(await connect());
  const devnull = fs.openSync('/dev/null', 'w');
  let ok = true;
  for (let round = 0; round < Number(rounds); round++) {
    const a = 10 + 2 * round;
    const b = a + 1;
    const [ra, rb] = await new Promise((resolve) =>
      setTimeout(() => {
        const pb = c2.request(head(b));
        fs.writeSync(devnull, 'x');
        const pa = c1.request(head(a));
        resolve(Promise.all([pa, pb]));
      }, 5),
    );
    for (const [id, r] of [[a, ra], [b, rb]]) {
      if (r.status !== 200 || r.body !== String(id)) {
        console.error(`/r/${id}: ${JSON.stringify(r)}`);
        ok = false;
      }
    }
  }
  console.log('done');
  await waitForFile(go + '.end');
  server.close();
  process.exit(ok ? 0 : 1);
});
