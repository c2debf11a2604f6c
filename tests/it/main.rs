//! Integration tests: a real server (embedded store or real redis-server processes), real gRPC
//! over 127.0.0.1:0, the real CLI (the binary's `main`, run in a child process of this test
//! binary: see `exe`). One binary, a module per concern.

mod admin;
mod bad_input;
mod cli;
mod exe;
mod ext_authz;
mod helpers;
mod introspection;
mod lifecycle;
#[path = "../../examples/mcp_server.rs"]
#[allow(dead_code)]
mod mcp_example;
mod middleware;
mod observability;
mod proxy;
mod redis;
mod redis_cluster;
mod redis_cluster_server;
mod redis_server;
mod redis_store_faults;
mod replica;
mod tls;
mod validate;
