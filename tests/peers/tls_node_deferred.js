// Node.js HTTPS server and client in one process, the client's TLS running over a JavaScript
// stream that hands each ciphertext write to its socket only on a later turn of the event loop
// (setImmediate): OpenSSL's output reaches the socket out of Node's usual synchronous order,
// interleaved with the other connections' calls. Serves as tls_node_server.js on
// 127.0.0.1:PORT; once the file GO exists, sends COUNT requests GET /r/ID to itself, all in
// flight at once over at most SOCKETS keep-alive connections; prints `done N`, keeps its
// connections open until the file GO.end exists, and exits 0 when all answered 200 with their
// own id.
// Usage: node tls_node_deferred.js PORT CERT KEY COUNT SOCKETS GO
'use strict';
const fs = require('fs');
const net = require('net');
const path = require('path');
const tls = require('tls');
const https = require('https');
const { Duplex } = require('stream');
const { serve } = require(path.join(__dirname, 'tls_node_server.js'));

const [port, cert, key, count, sockets, go] = process.argv.slice(2);

// A socket behind a JavaScript stream whose writes are deferred to the next loop turn.
class Deferred extends Duplex {
  constructor(sock) {
    super();
    this.sock = sock;
    sock.on('data', (d) => {
      if (!this.push(d)) sock.pause();
    });
    sock.on('end', () => this.push(null));
    sock.on('error', (e) => this.destroy(e));
    sock.on('close', () => this.destroy());
  }
  _read() {
    this.sock.resume();
  }
  _write(chunk, encoding, cb) {
    setImmediate(() => this.sock.write(chunk, cb));
  }
  _final(cb) {
    this.sock.end();
    cb();
  }
  _destroy(err, cb) {
    this.sock.destroy();
    cb(err);
  }
}

function waitForFile(file) {
  return new Promise((resolve) => {
    const poll = () => (fs.existsSync(file) ? resolve() : setTimeout(poll, 20));
    poll();
  });
}

function get(agent, id) {
  return new Promise((resolve) => {
    https
      .get({ host: '127.0.0.1', port: Number(port), path: '/r/' + id, agent }, (res) => {
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

module.exports = { Deferred, waitForFile };

if (require.main === module) serve(Number(port), cert, key, async (server) => {
  console.log('listening');
  await waitForFile(go);
  const agent = new https.Agent({ keepAlive: true, maxSockets: Number(sockets) });
  agent.createConnection = (options) =>
    tls.connect({
      socket: new Deferred(net.connect(options.port, options.host)),
      servername: 'localhost',
      rejectUnauthorized: false,
    });
  const ids = Array.from({ length: Number(count) }, (_, i) => i);
  const ok = (await Promise.all(ids.map((id) => get(agent, id)))).filter(Boolean).length;
  console.log('done ' + ok);
  await waitForFile(go + '.end');
  agent.destroy();
  server.close();
  process.exit(ok === Number(count) ? 0 : 1);
});
