//! The OpenTelemetry semantic-convention names the tracer emits, spelled once: span attribute
//! keys (HTTP, URL, network, RPC) and metric names. Span building, RED metrics and every sink
//! (terminal, JSON, OTLP) use these constants, never their own spelling.

/// HTTP (stable conventions).
pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
pub const HTTP_REQUEST_METHOD_ORIGINAL: &str = "http.request.method_original";
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
pub const HTTP_ROUTE: &str = "http.route";

/// URL.
pub const URL_SCHEME: &str = "url.scheme";
pub const URL_PATH: &str = "url.path";
pub const URL_QUERY: &str = "url.query";
pub const URL_FULL: &str = "url.full";

/// Endpoints and the network.
pub const SERVER_ADDRESS: &str = "server.address";
pub const SERVER_PORT: &str = "server.port";
pub const CLIENT_ADDRESS: &str = "client.address";
pub const CLIENT_PORT: &str = "client.port";
pub const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
pub const NETWORK_PEER_PORT: &str = "network.peer.port";
pub const NETWORK_PROTOCOL_VERSION: &str = "network.protocol.version";
pub const USER_AGENT_ORIGINAL: &str = "user_agent.original";
pub const ERROR_TYPE: &str = "error.type";

/// RPC (stable conventions).
pub const RPC_SYSTEM_NAME: &str = "rpc.system.name";
pub const RPC_METHOD: &str = "rpc.method";
pub const RPC_RESPONSE_STATUS_CODE: &str = "rpc.response.status_code";
/// Older experimental RPC keys, only with `OTEL_SEMCONV_STABILITY_OPT_IN=rpc/dup`.
pub const RPC_SYSTEM: &str = "rpc.system";
pub const RPC_SERVICE: &str = "rpc.service";
pub const RPC_GRPC_STATUS_CODE: &str = "rpc.grpc.status_code";

/// Metric names (duration histograms, seconds).
pub const HTTP_SERVER_REQUEST_DURATION: &str = "http.server.request.duration";
pub const HTTP_CLIENT_REQUEST_DURATION: &str = "http.client.request.duration";
pub const RPC_SERVER_CALL_DURATION: &str = "rpc.server.call.duration";
pub const RPC_CLIENT_CALL_DURATION: &str = "rpc.client.call.duration";
