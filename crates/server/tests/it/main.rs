//! Integration tests of the server on real sockets at 127.0.0.1:0, driven by
//! [`outpost_testkit`]'s raw client against [`outpost_testkit::TestServer`]s in this
//! process. One binary, one module per area.

mod archive;
mod c2s;
mod carbons;
mod cluster;
mod federation;
mod federation_paths;
mod federation_srv;
mod federation_websocket;
mod hub_cluster;
mod messages_offline;
mod muc;
mod operations;
mod pep;
mod presence_roster;
mod proxy65;
mod push;
mod replication;
mod services;
mod stream_management;
