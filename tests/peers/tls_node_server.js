// Node.js HTTPS server (Node's OpenSSL, memory BIOs): answers GET /r/ID with 200 and the body
// ID after ID % 7 milliseconds, so that responses of concurrent connections interleave.
// With TLS_NODE_LOG_SECURE set, it writes a line to stdout on each 'secureConnection'.
// Usage: node tls_node_server.js PORT CERT KEY (or `serve` from another script).
'use strict';
const fs = require('fs');
const https = require('https');

function serve(port, cert, key, onListening) {
  const server = https.createServer(
    { cert: fs.readFileSync(cert), key: fs.readFileSync(key), keepAliveTimeout: 30000 },
    (req, res) => {
      const id = (req.url.match(/^\/r\/(\d+)$/) || [])[1];
      if (id === undefined) {
        res.writeHead(404);
        res.end();
        return;
      }
      setTimeout(() => {
        res.writeHead(200, { 'Content-Type': 'text/plain' });
        res.end(id);
      }, Number(id) % 7);
    },
  );
  if (process.env.TLS_NODE_LOG_SECURE) {
    // What a server that logs its connections does: a write to stdout inside the OpenSSL call
    // that completes the handshake (Node emits 'secureConnection' there), before that call
    // decrypts the request that came with the client's Finished.
    server.on('secureConnection', () => fs.writeSync(1, 'secure connection\n'));
  }
  server.listen(port, '127.0.0.1', () => onListening(server));
  return server;
}

module.exports = { serve };

if (require.main === module) {
  const [port, cert, key] = process.argv.slice(2);
  serve(Number(port), cert, key, () => console.log('listening'));
}
