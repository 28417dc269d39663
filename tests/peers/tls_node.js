// Node.js HTTPS server and client in one process (one event-loop thread drives both ends'
// OpenSSL memory BIOs, their calls interleaved): serves as tls_node_server.js on
// 127.0.0.1:PORT; once the file GO exists, sends COUNT requests to itself, all in flight at
// once over at most SOCKETS keep-alive connections (tls_node_client.js), prints `done N`, keeps
// its connections open until the file GO.end exists, and exits 0 when all answered 200 with
// their own id.
// Usage: node tls_node.js PORT CERT KEY COUNT SOCKETS GO
'use strict';
const fs = require('fs');
const path = require('path');
const { serve } = require(path.join(__dirname, 'tls_node_server.js'));
const { run } = require(path.join(__dirname, 'tls_node_client.js'));

const [port, cert, key, count, sockets, go] = process.argv.slice(2);

function waitForFile(file) {
  return new Promise((resolve) => {
    const poll = () => (fs.existsSync(file) ? resolve() : setTimeout(poll, 20));
    poll();
  });
}

serve(Number(port), cert, key, async (server) => {
  console.log('listening');
  await waitForFile(go);
  const ok = await run(Number(port), Number(count), Number(sockets), 0, async (ok) => {
    console.log('done ' + ok);
    await waitForFile(go + '.end');
  });
  server.close();
  process.exit(ok === Number(count) ? 0 : 1);
});
