//! [`Client`](crate::Client) for tests that are not async: those that start `outpost
//! serve` processes, wait for them with `std::process`, and read their logs.
//!
//! Each client owns a current-thread tokio runtime and blocks on it for every call, so
//! such a test reads as a sequence of steps without `.await`, and the client underneath
//! is the same one the in-process tests use (XML parsed into elements, not substrings).

use std::net::SocketAddr;
use std::time::Duration;

use outpost_proto::minidom::Element;
use tokio::runtime::Runtime;

/// A [`crate::Client`] driven from synchronous code.
pub struct Client {
    // Declared before the runtime, so the socket is dropped first.
    inner: crate::Client,
    rt: Runtime,
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

impl Client {
    /// A plaintext connection to `addr` with a stream to `domain` opened and its features
    /// read; every read may take up to `wait`.
    pub fn connect(addr: SocketAddr, domain: &str, wait: Duration) -> Client {
        let rt = runtime();
        let inner = rt.block_on(async {
            let mut c = crate::Client::connect(addr, domain).await;
            c.wait = wait;
            c.open().await;
            c.features = Some(c.recv().await);
            c
        });
        Client { inner, rt }
    }

    /// A plaintext connection to `addr` with nothing sent yet.
    pub fn connect_raw(addr: SocketAddr, wait: Duration) -> Client {
        let rt = runtime();
        let inner = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let mut c = crate::Client::new(Box::new(tcp));
            c.wait = wait;
            c
        });
        Client { inner, rt }
    }

    /// Registers `user` in band (XEP-0077) on a fresh connection, and checks the server
    /// created the account.
    pub fn register(addr: SocketAddr, domain: &str, user: &str, password: &str, wait: Duration) {
        let mut c = Client::connect(addr, domain, wait);
        let reply = c.run(async |c| c.register(user, password).await);
        assert_eq!(
            reply.attr("type"),
            Some("result"),
            "registration: {reply:?}"
        );
    }

    /// Logs in with SASL PLAIN without TLS (the server must allow it) and binds
    /// `resource`.
    pub fn login(
        addr: SocketAddr,
        domain: &str,
        user: &str,
        password: &str,
        resource: &str,
        wait: Duration,
    ) -> Client {
        let mut c = Client::connect(addr, domain, wait);
        c.run(async |c| c.login_plain(user, password, resource).await);
        c
    }

    /// Runs any async step of the client to completion.
    pub fn run<T>(&mut self, step: impl AsyncFnOnce(&mut crate::Client) -> T) -> T {
        self.rt.block_on(step(&mut self.inner))
    }

    pub fn send(&mut self, xml: &str) {
        self.run(async |c| c.send(xml).await);
    }

    pub fn recv(&mut self) -> Element {
        self.run(async |c| c.recv().await)
    }

    /// See [`crate::Client::recv_until`].
    pub fn recv_until(&mut self, pred: impl Fn(&Element) -> bool) -> Vec<Element> {
        self.run(async |c| c.recv_until(pred).await)
    }

    /// See [`crate::Client::barrier`].
    pub fn barrier(&mut self) -> Vec<Element> {
        self.run(async |c| c.barrier().await)
    }
}
