//! The load generator against real Outpost servers in this process
//! ([`outpost_testkit::TestServer`]), so that the benchmark code cannot rot.

mod federation_smoke;
mod smoke;
mod web_smoke;
