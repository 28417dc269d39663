// Node.js HTTPS server and client in one process (Node's OpenSSL is linked into its binary):
// serves GET on 127.0.0.1:PORT with CERT/KEY; once the file GO exists, sends COUNT requests to
// itself over one keep-alive agent, prints `done N` and exits 0 when all answered 200.
// Usage: node tls_node.js PORT CERT KEY COUNT GO
'use strict';
const fs = require('fs');
const https = require('https');

const [port, cert, key, count, go] = process.argv.slice(2);

function waitForFile(path) {
  return new Promise((resolve) => {
    const poll = () => (fs.existsSync(path) ? resolve() : setTimeout(poll, 20));
    poll();
  });
}
const server = https.createServer(
  { cert: fs.readFileSync(cert), key: fs.readFileSync(key) },
  (req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('ok\n');
  },
);
server.listen(Number(port), '127.0.0.1', async () => {
  console.log('listening');
  await waitForFile(go);
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  let ok = 0;
  for (let i = 0; i < Number(count); i++) {
    const status = await new Promise((resolve) => {
      https
        .get({ host: '127.0.0.1', port: Number(port), path: '/node?i=' + i, agent, rejectUnauthorized: false }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode));
        })
        .on('error', () => resolve(0));
    });
    if (status === 200) ok++;
  }
  console.log('done ' + ok);
  agent.destroy();
  server.close();
  process.exit(ok === Number(count) ? 0 : 1);
});
