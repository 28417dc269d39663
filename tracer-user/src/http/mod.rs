//! HTTP/1.x framing of captured byte streams and pairing of requests with responses.
