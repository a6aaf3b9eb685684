//! `outpost serve` on PostgreSQL (`[storage] backend = "postgres"`), against a real server
//! (the test kit starts one): accounts made in-band and listed by `outpost user list`,
//! messages to an offline user accepted, the server killed with SIGKILL and started again
//! on the same database, and every message delivered once, in order; and a site moved from
//! SQLite to PostgreSQL with `outpost admin migrate-store`.

use std::process::Command;

use outpost_testkit::NS_DELAY;

use super::common::{Server, any_error, bodies, has_body, login, register};

const DOMAIN: &str = "pg.test";

fn start(dir: &std::path::Path, url: &str) -> Server {
    let storage = format!("storage.backend = \"postgres\"\nstorage.url = {url:?}\n");
    let any = "127.0.0.1:0".parse().expect("addr");
    Server::start_configured(dir, DOMAIN, any, &[], "info", &storage, "")
}

#[test]
fn a_server_on_postgres_keeps_what_it_accepted_across_kill_9() {
    const COUNT: usize = 50;
    let pg = outpost_testkit::postgres::shared();
    let url = pg.url(&pg.create_database());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start(dir.path(), &url);
    register(server.c2s, DOMAIN, "bob");
    drop(login(server.c2s, DOMAIN, "bob"));
    register(server.c2s, DOMAIN, "alice");
    let mut alice = login(server.c2s, DOMAIN, "alice");
    for i in 0..COUNT {
        alice.send(&format!(
            "<message to='bob@{DOMAIN}' type='chat' id='m{i}'><body>message {i}</body></message>"
        ));
    }
    // Once the ping is answered, every message before it is committed.
    let before = alice.barrier();
    assert!(!any_error(&before), "a message was refused: {before:?}");
    let config = dir.path().join(format!("{DOMAIN}.toml"));
    let status = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["admin", "status", "--config"])
        .arg(&config)
        .output()
        .expect("outpost admin status");
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(said.contains("store: PostgreSQL postgres://"), "{said}");
    server.kill();

    // The accounts are in PostgreSQL: the command line reads them there.
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["user", "list", "--config"])
        .arg(&config)
        .output()
        .expect("outpost user list");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for user in ["alice", "bob"] {
        assert!(listed.contains(&format!("{user}@{DOMAIN}")), "{listed}");
    }

    let server = start(dir.path(), &url);
    let mut bob = login(server.c2s, DOMAIN, "bob");
    bob.send("<presence/>");
    let got = bob.recv_until(|el| has_body(el, &format!("message {}", COUNT - 1)));
    assert_eq!(
        bodies(&got),
        (0..COUNT).collect::<Vec<_>>(),
        "all, once, in order"
    );
    assert!(
        got.iter()
            .filter(|el| el.name() == "message")
            .all(|el| el.has_child("delay", NS_DELAY)),
        "offline messages carry a delay stamp"
    );
}

#[test]
fn a_site_moves_from_sqlite_to_postgres_with_migrate_store() {
    const COUNT: usize = 5;
    let dir = tempfile::tempdir().expect("tempdir");
    let any = "127.0.0.1:0".parse().expect("addr");
    let mut server = Server::start_configured(dir.path(), DOMAIN, any, &[], "info", "", "");
    register(server.c2s, DOMAIN, "bob");
    drop(login(server.c2s, DOMAIN, "bob"));
    register(server.c2s, DOMAIN, "alice");
    let mut alice = login(server.c2s, DOMAIN, "alice");
    for i in 0..COUNT {
        alice.send(&format!(
            "<message to='bob@{DOMAIN}' type='chat' id='m{i}'><body>message {i}</body></message>"
        ));
    }
    let before = alice.barrier();
    assert!(!any_error(&before), "a message was refused: {before:?}");
    drop(alice);
    server.terminate();

    let pg = outpost_testkit::postgres::shared();
    let url = pg.url(&pg.create_database());
    let config = dir.path().join(format!("{DOMAIN}.toml"));
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["admin", "migrate-store", "--to", &url, "--config"])
        .arg(&config)
        .output()
        .expect("outpost admin migrate-store");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("2 accounts") && said.contains("5 offline messages"),
        "{said}"
    );

    // The same site, now on PostgreSQL: Bob gets what waited for him.
    let server = start(dir.path(), &url);
    let mut bob = login(server.c2s, DOMAIN, "bob");
    bob.send("<presence/>");
    let got = bob.recv_until(|el| has_body(el, &format!("message {}", COUNT - 1)));
    assert_eq!(
        bodies(&got),
        (0..COUNT).collect::<Vec<_>>(),
        "all, once, in order"
    );
}
