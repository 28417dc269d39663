//! Test doubles and fixtures for the unit tests, kept out of the product modules: a loopback
//! Kubernetes API, real Go builds.
//! (OTLP receivers come from the `otlp-receiver` crate, shared with the end-to-end tests and the
//! bench.)

pub mod fake_k8s_api;
pub mod go_build;
