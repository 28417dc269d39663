// Node.js HTTPS client (Node's OpenSSL, memory BIOs): COUNT requests GET /r/FIRST.. to
// 127.0.0.1:PORT, all in flight at once over one keep-alive agent of at most SOCKETS
// connections; each response body must be its request's id. Prints `done N`, exits 0 when all
// N answered 200 with the right body.
// Usage: node tls_node_client.js PORT COUNT SOCKETS FIRST (or `run` from another script).
'use strict';
const https = require('https');

function get(agent, port, id) {
  return new Promise((resolve) => {
    https
      .get({ host: '127.0.0.1', port, path: '/r/' + id, agent, rejectUnauthorized: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk) => (body += chunk));
        res.on('end', () => resolve(res.statusCode === 200 && body === String(id)));
      })
      .on('error', (e) => {
        console.error('request ' + id + ': ' + e);
        resolve(false);
      });
  });
}

// Resolves to the number of requests answered 200 with their own id; `hold` (optional, async)
// is called with that number before the connections are closed.
async function run(port, count, sockets, first, hold) {
  const agent = new https.Agent({ keepAlive: true, maxSockets: sockets });
  const ids = Array.from({ length: count }, (_, i) => first + i);
  const results = await Promise.all(ids.map((id) => get(agent, port, id)));
  const ok = results.filter(Boolean).length;
  if (hold) await hold(ok);
  agent.destroy();
  return ok;
}

module.exports = { run };

if (require.main === module) {
  const [port, count, sockets, first] = process.argv.slice(2).map(Number);
  run(port, count, sockets, first).then((ok) => {
    console.log('done ' + ok);
    process.exit(ok === count ? 0 : 1);
  });
}
