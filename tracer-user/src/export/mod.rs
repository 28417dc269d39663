//! Span sinks: OTLP (gRPC, HTTP/protobuf) with batching and retry, terminal text, JSON lines.
