//! navis-auth: the token validation service behind the Navis Ops API and MCP servers.
//!
//! Every request those servers receive carries a bearer token (an API key `nops_…` or an OAuth
//! access token `nopo_…`); before doing any work they ask `Validator.Validate` who it is and
//! whether it may do this. The answer is ALLOW, UNAUTHENTICATED (401) or FORBIDDEN (403) with a
//! ready RFC 6750 challenge; a store outage is gRPC `UNAVAILABLE`, never a 401.
//!
//! # Layout
//! - [`token`]: token format: generate, parse, checksum, hash (no I/O, no allocation on reject)
//! - [`scope`]: RFC 6749 scope tokens and scope sets
//! - [`record`]: [`record::TokenRecord`], what a token grants, and its at-rest encoding
//! - [`clock`]: injected wall-clock time
//! - [`challenge`]: denial reasons, RFC 6750 error codes and `WWW-Authenticate` values
//! - [`cache`]: the sharded in-memory cache (positive + negative, flush by generation)
//! - [`store`]: the `TokenStore` trait; [`store::embedded`] is the local redb store
//! - [`validator`]: the pipeline: parse → cache → coalesced store lookup → checks → verdict
//! - [`revocation`]: invalidation fan-out
//! - [`admin`]: token lifecycle: create, rotate, issue, refresh, revoke, list
//! - [`grpc`]: protobuf ↔ domain adapters and the one error → `Status` mapping
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`
//! - [`metrics`]: metric names, help, buckets, pre-registered handles
//! - [`config`]: flags and `NAVIS_AUTH_*` environment, parsed once
//! - [`server`]: wiring, serving and graceful shutdown
//! - [`tls`]: rustls for the gRPC listeners and clients, from the `--tls-*` PEM files
//! - [`cli`]: the client subcommands
//! - [`run`]: the `navis-auth` command (what `src/main.rs` calls)
//! - [`client`]: a Rust client and `tower` layer for API and MCP servers
//! - [`pb`]: generated code

pub mod admin;
pub mod cache;
pub mod challenge;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod pb;
pub mod record;
pub mod revocation;
pub mod run;
pub mod scope;
pub mod server;
pub mod store;
pub mod tls;
pub mod token;
pub mod validator;
