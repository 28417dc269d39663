//! Test doubles for the unit tests, kept out of the product modules: a loopback Kubernetes API
//! and in-process OTLP receivers with scripted replies.

pub mod fake_k8s_api;
pub mod otlp_receivers;
