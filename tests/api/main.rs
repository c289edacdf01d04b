//! Integration tests: the gateway on a random loopback port, the simulated
//! upstream counting what reaches it. One module per behaviour area.

mod access;
mod bad_input;
mod caching;
mod coalescing;
mod credentials;
mod eviction;
mod fleet;
mod helpers;
mod observability;
mod official_sdk;
mod process;
mod rate_limit;
mod resilience;
mod server;
mod signer;
