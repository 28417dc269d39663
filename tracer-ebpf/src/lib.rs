//! Empty library target: lets `tracer-user`'s build script depend on this crate so cargo rebuilds
//! the agent when the eBPF programs change. The programs themselves are in `main.rs`.
#![no_std]
