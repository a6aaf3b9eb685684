//! File upload (XEP-0363): a slot over XMPP, the PUT and GETs over HTTPS, the checks on
//! both, files that survive a restart, and the sweep that deletes expired ones.

use std::sync::Arc;

use outpost_proto::minidom::Element;
use outpost_store::UploadSlot;
use outpost_testkit::*;
use outpost_web::Web;

use crate::http::{Reply, https_addr, request};

const NS_UPLOAD: &str = "urn:xmpp:http:upload:0";
const SERVICE: &str = "upload.localhost";

async fn server_with(tweak: impl FnOnce(&mut outpost_server::config::Config)) -> TestServer {
    let server = TestServer::start_with_http(tweak, Arc::new(Web::new())).await;
    server.add_user("alice", "wonderland").await;
    server
}

/// A slot: the PUT URL's path, its Authorization header, the GET URL.
struct Slot {
    path: String,
    authorization: String,
    get_url: String,
}

fn slot_request(filename: &str, size: usize, content_type: &str) -> String {
    format!(
        "<request xmlns='{NS_UPLOAD}' filename='{filename}' size='{size}' \
         content-type='{content_type}'/>"
    )
}

async fn ask_slot(alice: &mut Client, filename: &str, size: usize) -> Result<Slot, Element> {
    let reply = alice
        .query(
            "get",
            Some(SERVICE),
            &slot_request(filename, size, "image/png"),
        )
        .await;
    let Some(slot) = reply.get_child("slot", NS_UPLOAD) else {
        return Err(reply);
    };
    let put = slot.get_child("put", NS_UPLOAD).expect("put");
    let put_url = put.attr("url").expect("put url");
    let get_url = slot.get_child("get", NS_UPLOAD).and_then(|g| g.attr("url"));
    let header = put.get_child("header", NS_UPLOAD).expect("a header");
    assert_eq!(header.attr("name"), Some("Authorization"));
    Ok(Slot {
        path: path_of(put_url),
        authorization: header.text(),
        get_url: get_url.expect("get url").to_owned(),
    })
}

fn path_of(url: &str) -> String {
    let rest = url.strip_prefix("https://").expect("https URL");
    rest[rest.find('/').expect("a path")..].to_owned()
}

fn file(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 7 + i / 251) as u8).collect()
}

async fn put(server: &TestServer, slot: &Slot, auth: Option<&str>, body: Vec<u8>) -> Reply {
    let mut headers = vec![("content-type", "image/png")];
    if let Some(auth) = auth {
        headers.push(("authorization", auth));
    }
    request(server, "PUT", &slot.path, &headers, body).await
}

#[tokio::test]
async fn a_file_goes_up_and_comes_down_byte_for_byte() {
    let server = server_with(|_| {}).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    // The service is listed on the domain and says how large a file may be.
    let items = alice
        .query(
            "get",
            Some("localhost"),
            &format!("<query xmlns='{NS_DISCO_ITEMS}'/>"),
        )
        .await;
    assert!(format!("{items:?}").contains(SERVICE), "{items:?}");
    let info = alice
        .query(
            "get",
            Some(SERVICE),
            &format!("<query xmlns='{NS_DISCO_INFO}'/>"),
        )
        .await;
    let text = format!("{info:?}");
    assert!(
        text.contains(NS_UPLOAD) && text.contains("104857600"),
        "{text}"
    );

    let data = file(300_000);
    let slot = ask_slot(&mut alice, "holiday photo.png", data.len())
        .await
        .unwrap();
    // URLs name the HTTPS listener, and the file name, encoded.
    let base = format!("https://{}/upload/", https_addr(&server));
    assert!(slot.get_url.starts_with(&base), "{}", slot.get_url);
    assert!(
        slot.get_url.ends_with("/holiday%20photo.png"),
        "{}",
        slot.get_url
    );
    // Nobody has it before it is stored.
    assert_eq!(
        request(&server, "GET", &slot.path, &[], vec![])
            .await
            .status,
        404
    );

    let stored = put(&server, &slot, Some(&slot.authorization), data.clone()).await;
    assert_eq!(
        stored.status,
        201,
        "{:?}",
        String::from_utf8_lossy(&stored.body)
    );
    let got = request(&server, "GET", &path_of(&slot.get_url), &[], vec![]).await;
    assert_eq!(got.status, 200);
    assert!(got.body == data, "byte-identical");
    assert_eq!(got.header("content-type"), Some("image/png"));
    assert_eq!(got.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(got.header("access-control-allow-origin"), Some("*"));
    assert!(
        got.header("content-disposition")
            .unwrap()
            .starts_with("inline")
    );
    let head = request(&server, "HEAD", &slot.path, &[], vec![]).await;
    assert_eq!(head.header("content-length"), Some("300000"));
    assert!(head.body.is_empty());
    // Once only.
    let again = put(&server, &slot, Some(&slot.authorization), data).await;
    assert_eq!(again.status, 409);
}

#[tokio::test]
async fn slots_and_puts_are_checked() {
    let server = server_with(|c| {
        c.upload.max_file_bytes = 1000;
        c.upload.quota_bytes = 1500;
    })
    .await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let too_large = ask_slot(&mut alice, "big.png", 1001).await.err().unwrap();
    assert_eq!(stanza_error(&too_large).0, "not-acceptable");
    assert!(format!("{too_large:?}").contains("file-too-large"));
    let bad_name = ask_slot(&mut alice, "../x.png", 10).await.err().unwrap();
    assert_eq!(stanza_error(&bad_name).0, "bad-request");

    let slot = ask_slot(&mut alice, "a.png", 1000).await.unwrap();
    // The quota counts slots not yet used too.
    let over = ask_slot(&mut alice, "b.png", 600).await.err().unwrap();
    assert_eq!(stanza_error(&over).0, "resource-constraint");

    assert_eq!(put(&server, &slot, None, file(1000)).await.status, 403);
    assert_eq!(
        put(&server, &slot, Some("Bearer guess"), file(1000))
            .await
            .status,
        403
    );
    let short = put(&server, &slot, Some(&slot.authorization), file(999)).await;
    assert_eq!(short.status, 400);
    let long = put(&server, &slot, Some(&slot.authorization), file(1001)).await;
    assert_eq!(long.status, 413);
    let wrong_type = request(
        &server,
        "PUT",
        &slot.path,
        &[
            ("authorization", &slot.authorization),
            ("content-type", "text/html"),
        ],
        file(1000),
    )
    .await;
    assert_eq!(wrong_type.status, 400);
    let elsewhere = slot.path.replace("/a.png", "/b.png");
    let unknown = request(
        &server,
        "PUT",
        &elsewhere,
        &[("authorization", &slot.authorization)],
        file(1000),
    )
    .await;
    assert_eq!(unknown.status, 404);
    // None of that stored anything; the real one does.
    assert_eq!(
        put(&server, &slot, Some(&slot.authorization), file(1000))
            .await
            .status,
        201
    );
    // Web clients may use it from any page.
    let pre = request(
        &server,
        "OPTIONS",
        &slot.path,
        &[("origin", "https://web.example")],
        vec![],
    )
    .await;
    assert_eq!(pre.status, 204);
    assert!(
        pre.header("access-control-allow-methods")
            .unwrap()
            .contains("PUT")
    );
    assert_eq!(
        request(&server, "GET", "/elsewhere", &[], vec![])
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn files_survive_a_restart_and_expired_ones_are_deleted() {
    let mut server = server_with(|c| c.upload.expire_days = 30).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let data = file(5000);
    let slot = ask_slot(&mut alice, "kept.png", data.len()).await.unwrap();
    assert_eq!(
        put(&server, &slot, Some(&slot.authorization), data.clone())
            .await
            .status,
        201
    );
    // A file stored 31 days ago, and a slot never used for a day and a half.
    let dir = server.dir.path().join("uploads");
    let day = 86_400_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for (id, age, done) in [("old", 31 * day, true), ("unused", 36 * day / 24, false)] {
        let row = UploadSlot {
            slot: id.to_owned(),
            owner: "alice@localhost".to_owned(),
            filename: "x.png".to_owned(),
            size: 1,
            content_type: None,
            put_token: vec![0; 32],
            created_ms: now - age,
            completed_ms: done.then_some(now - age),
        };
        server.store.upload_reserve(&row, u64::MAX).await.unwrap();
        std::fs::write(dir.join(id), b"x").unwrap();
    }
    server.restart().await;
    // The sweep runs as the server starts.
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        let gone = !dir.join("old").exists() && !dir.join("unused").exists();
        let forgotten = server.store.upload_slot("old").await.unwrap().is_none();
        match gone && forgotten {
            true => Ok(()),
            false => Err("expired uploads still there".to_owned()),
        }
    })
    .await;
    let got = request(&server, "GET", &path_of(&slot.get_url), &[], vec![]).await;
    assert_eq!(got.status, 200);
    assert!(got.body == data);
}
