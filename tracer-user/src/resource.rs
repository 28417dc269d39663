//! Per-process OTel resource: service.name discovery from /proc, process.* and host.name.
