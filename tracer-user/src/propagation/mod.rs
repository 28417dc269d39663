//! Incoming trace context: W3C traceparent/tracestate, B3 single and multi, AWS X-Ray.
