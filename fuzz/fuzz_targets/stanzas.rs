//! Stanza handling of the whole server: one real Outpost (in-memory store) runs for the
//! life of the fuzzing process; every input is sent, after a genuine login and initial
//! presence, by a client over loopback TCP, while a second user stays online to receive
//! what gets routed. The server must never panic (libFuzzer's panic hook aborts the process,
//! also for panics inside server tasks) and must keep accepting logins afterwards.

#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use outpost_server::config::Config;
use outpost_server::{ListenerKind, ServerHandle, TlsIdentity, accounts};
use outpost_store::{MemoryStore, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' \
    xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

struct Fixture {
    rt: Runtime,
    /// Kept, not leaked: the server runs for the life of the process.
    _server: ServerHandle,
    addr: SocketAddr,
    store: Arc<MemoryStore>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rt = Runtime::new().expect("runtime");
        let store = Arc::new(MemoryStore::new());
        let (server, addr) = rt.block_on(async {
            let mut config = Config::default();
            config.listen.c2s = vec!["127.0.0.1:0".parse().expect("addr")];
            config.listen.c2s_tls = Vec::new();
            config.auth.allow_plaintext_without_tls = true;
            config.auth.scram_iterations = 1;
            config.registration.enabled = Some(true);
            config.limits.login_failures_per_ip = u32::MAX;
            config.limits.login_failures_per_account = u32::MAX;
            config.limits.max_resources_per_account = 1000;
            config.limits.read_rate_bytes_per_sec = u32::MAX;
            config.limits.read_burst_bytes = u32::MAX;
            config.limits.max_stanza_bytes = 16384;
            let identity = TlsIdentity::self_signed(&config.domains).expect("cert");
            let dyn_store: Arc<dyn Store> = store.clone();
            let handle = ServerHandle::start(config, dyn_store, identity)
                .await
                .expect("server");
            let addr = handle.local_addrs()[0].1;
            assert_eq!(handle.local_addrs()[0].0, ListenerKind::C2sStartTls);
            (handle, addr)
        });
        let bob_store = store.clone();
        let f = Fixture {
            rt,
            _server: server,
            addr,
            store,
        };
        // Bob stays online for the whole run, so routed stanzas reach a live session.
        f.rt.spawn(async move {
            loop {
                ensure_user(&bob_store, "bob").await;
                if let Some(mut bob) = login(addr, "bob").await {
                    let mut buf = vec![0u8; 65536];
                    while matches!(bob.read(&mut buf).await, Ok(n) if n > 0) {}
                }
            }
        });
        f
    })
}

/// Makes sure the account exists with its known password: inputs may remove it or change
/// its password through XEP-0077.
async fn ensure_user(store: &Arc<MemoryStore>, user: &str) {
    let jid = format!("{user}@localhost");
    let _ = accounts::remove_user(store.as_ref(), &jid).await;
    accounts::add_user(store.as_ref(), &jid, "pw", 1)
        .await
        .expect("add user");
}

async fn read_until(s: &mut TcpStream, needle: &[u8]) -> bool {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(needle.len()).any(|w| w == needle) {
                    return true;
                }
            }
            _ => return false,
        }
    }
}

/// PLAIN login on the plaintext listener, bind, initial presence.
async fn login(addr: SocketAddr, user: &str) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(HEADER).await.ok()?;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0pw"));
    s.write_all(
        format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{auth}</auth>")
            .as_bytes(),
    )
    .await
    .ok()?;
    if !read_until(&mut s, b"<success").await {
        return None;
    }
    s.write_all(HEADER).await.ok()?;
    s.write_all(
        b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq><presence/>",
    )
    .await
    .ok()?;
    read_until(&mut s, b"<presence").await.then_some(s)
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    f.rt.block_on(async {
        let mut alice = match login(f.addr, "alice").await {
            Some(s) => s,
            None => {
                ensure_user(&f.store, "alice").await;
                login(f.addr, "alice").await.expect("the server still accepts logins")
            }
        };
        let _ = alice.write_all(data).await;
        // End of input: the server sees EOF and must wind the session down.
        let _ = alice.shutdown().await;
        let mut buf = vec![0u8; 65536];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, alice.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => break,
                Err(_) => panic!("the server did not end the session after EOF"),
            }
        }
    });
});
