//! The HTTPS listener of a real server (`TestServer` with [`outpost_web::Web`]) driven by
//! a real HTTP client (hyper's, over TLS): file upload end to end, slot requests over XMPP
//! and files over HTTP.

mod api;
mod api_rooms;
mod http;
mod ops;
mod upload;
mod websocket;
