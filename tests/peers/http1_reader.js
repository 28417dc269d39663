// A minimal HTTP/1.1 response reader for raw sockets (net or tls) in the tests' Node peers:
// `request(sock, head)` writes a request head and resolves to { status, body } once the whole
// response (Content-Length or chunked) is read. One request in flight per socket.
'use strict';

// Decodes a chunked body from `buf` (after the head): { body, used } once complete, else null.
function chunked(buf) {
  let at = 0;
  let body = '';
  for (;;) {
    const eol = buf.indexOf('\r\n', at);
    if (eol < 0) return null;
    const size = parseInt(buf.slice(at, eol), 16);
    if (Number.isNaN(size)) throw new Error('bad chunk size: ' + JSON.stringify(buf.slice(at, eol)));
    if (size === 0) {
      const end = buf.indexOf('\r\n', eol + 2);
      return end < 0 ? null : { body, used: end + 2 };
    }
    if (buf.length < eol + 2 + size + 2) return null;
    body += buf.slice(eol + 2, eol + 2 + size);
    at = eol + 2 + size + 2;
  }
}

// Parses one response from the start of `buf`: { status, body, used } or null if incomplete.
function parse(buf) {
  const headEnd = buf.indexOf('\r\n\r\n');
  if (headEnd < 0) return null;
  const head = buf.slice(0, headEnd).split('\r\n');
  const status = Number(head[0].split(' ')[1]);
  const field = (name) => {
    const line = head.find((l) => l.toLowerCase().startsWith(name + ':'));
    return line === undefined ? undefined : line.slice(name.length + 1).trim();
  };
  const rest = buf.slice(headEnd + 4);
  const length = field('content-length');
  if (length !== undefined) {
    const n = Number(length);
    return rest.length < n ? null : { status, body: rest.slice(0, n), used: headEnd + 4 + n };
  }
  if ((field('transfer-encoding') || '').toLowerCase() === 'chunked') {
    const c = chunked(rest);
    return c === null ? null : { status, body: c.body, used: headEnd + 4 + c.used };
  }
  return { status, body: '', used: headEnd + 4 };
}

// Follows `sock`'s responses; returns `request(head)` (writes `head`, resolves to the next
// response) and `expect()` (the next response's promise, for a request written elsewhere).
function reader(sock) {
  let buf = '';
  const waiting = [];
  sock.setEncoding('latin1');
  sock.on('data', (d) => {
    buf += d;
    for (;;) {
      if (waiting.length === 0) return;
      const r = parse(buf);
      if (r === null) return;
      buf = buf.slice(r.used);
      waiting.shift()({ status: r.status, body: r.body });
    }
  });
  const expect = () => new Promise((resolve) => waiting.push(resolve));
  const request = (head) => {
    const p = expect();
    sock.write(head);
    return p;
  };
  return { request, expect };
}

module.exports = { reader };
