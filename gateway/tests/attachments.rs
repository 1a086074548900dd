//! Attachments over real HTTP against the real gateway (SPEC "Attachments"): sniffing,
//! limits, sending rules, signed links (expiry, tampering), each credential rule, the
//! download's headers, 304 and 206, the upload rate limit, and kill -9 durability on the
//! embedded store. Redis mode with S3 is in `attachments_s3.rs`.

mod common;

use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A real (tiny, valid) PNG: 1×1, red.
pub const PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90, 0x77, 0x53,
    0xDE, 0x00, 0x00, 0x00, 0x0C, 0x49, 0x44, 0x41, 0x54, 0x08, 0xD7, 0x63, 0xF8, 0xCF, 0xC0, 0x00,
    0x00, 0x03, 0x01, 0x01, 0x00, 0x18, 0xDD, 0x8D, 0xB0, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4E,
    0x44, 0xAE, 0x42, 0x60, 0x82,
];

fn pdf() -> Vec<u8> {
    b"%PDF-1.4\n1 0 obj <</Type /Catalog>> endobj\ntrailer <</Root 1 0 R>>\n%%EOF\n".to_vec()
}

fn hex_sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Raw-body upload as a visitor.
async fn upload(c: &Client, s: &Session, name: &str, ctype: &str, bytes: Vec<u8>) -> Resp {
    c.request(
        "POST",
        &format!("/v1/attachments?filename={name}"),
        &[("authorization", &s.bearer()), ("content-type", ctype)],
        Some(bytes),
    )
    .await
}

/// Multipart upload (one `file` part) to `path` with `auth`.
async fn upload_multipart(c: &Client, path: &str, auth: &str, name: &str, bytes: &[u8]) -> Resp {
    let boundary = "confab-test-boundary-7MA4YWxk";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nignored\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    c.request(
        "POST",
        path,
        &[
            ("authorization", auth),
            (
                "content-type",
                &format!("multipart/form-data; boundary={boundary}"),
            ),
        ],
        Some(body),
    )
    .await
}

async fn send_files(c: &Client, s: &Session, text: &str, ids: &[&str], cmid: &str) -> Resp {
    c.post(
        "/v1/messages",
        &[("authorization", &s.bearer())],
        &json!({"message": text, "attachments": ids, "clientMessageId": cmid}),
    )
    .await
}

fn header<'a>(r: &'a Resp, name: &str) -> &'a str {
    r.headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_png_and_a_pdf_reach_the_agent_with_working_links() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let s = c.session(PK).await;
    // A PNG sent as text/plain is a PNG: the bytes decide.
    let png = upload(&c, &s, "shot.png", "text/plain", PNG.to_vec()).await;
    assert_eq!(png.status, 201, "{}", png.text);
    assert_eq!(png.json["contentType"], "image/png");
    assert_eq!(png.json["size"], PNG.len());
    assert_eq!(png.json["filename"], "shot.png");
    assert_eq!(png.json["sha256"], hex_sha(PNG));
    assert!(png.json["id"].as_str().unwrap().starts_with("att_"));
    assert!(png.json["url"].as_str().unwrap().contains("sig="));
    let doc = upload_multipart(
        &c,
        "/v1/attachments",
        &s.bearer(),
        "Rechnung März.pdf",
        &pdf(),
    )
    .await;
    assert_eq!(doc.status, 201, "{}", doc.text);
    assert_eq!(doc.json["contentType"], "application/pdf");
    assert_eq!(doc.json["filename"], "Rechnung März.pdf");

    let (mut agent, _) = Ws::open(gw.addr, "/v1/tenant/ws", &acme_agent("ann"), None).await;
    let ids = [
        png.json["id"].as_str().unwrap(),
        doc.json["id"].as_str().unwrap(),
    ];
    // Empty text is fine with files.
    let sent = send_files(&c, &s, "  ", &ids, "f1").await;
    assert_eq!(sent.status, 201, "{}", sent.text);
    let live = loop {
        let e = agent.next_of(&["message:new"]).await;
        if e["data"]["clientMessageId"] == "f1" {
            break e;
        }
    };
    let files = live["data"]["attachments"].as_array().unwrap().clone();
    assert_eq!(files.len(), 2);
    assert_eq!(live["data"]["body"], "");
    // The link alone opens the file, on the agent's side.
    let url = files[0]["url"].as_str().unwrap();
    let got = c.get(url, &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(header(&got, "content-type"), "image/png");
    assert_eq!(header(&got, "content-length"), PNG.len().to_string());

    // History (visitor and tenant) carries fresh links too; messages without files carry [].
    let history = c.history(&s).await;
    let with_files: Vec<&Value> = history
        .iter()
        .filter(|m| !m["attachments"].as_array().unwrap().is_empty())
        .collect();
    assert_eq!(with_files.len(), 1);
    for f in with_files[0]["attachments"].as_array().unwrap() {
        let r = c.get(f["url"].as_str().unwrap(), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let pdf_url = with_files[0]["attachments"][1]["url"].as_str().unwrap();
    let r = c.get(&format!("{pdf_url}&disposition=inline"), &[]).await;
    assert_eq!(
        header(&r, "content-disposition"),
        "inline; filename=\"Rechnung M_rz.pdf\"; filename*=UTF-8''Rechnung%20M%C3%A4rz.pdf"
    );
    let tenant_history = c
        .get_auth(
            &format!("/v1/tenant/conversations/{}/messages", s.conversation_id),
            &acme_agent("ann"),
        )
        .await;
    let msgs = tenant_history.json["messages"].as_array().unwrap();
    assert!(msgs.iter().all(|m| m["attachments"].is_array()));
    assert!(msgs
        .iter()
        .flat_map(|m| m["attachments"].as_array().unwrap())
        .all(|a| a["url"]
            .as_str()
            .unwrap()
            .starts_with("/v1/attachments/att_")));
    // Tenant events (polling) mint links as well.
    let events = c.tenant_events(&acme_agent("ann"), None).await;
    let ev = events.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["data"]["clientMessageId"] == "f1")
        .unwrap()
        .clone();
    assert!(ev["data"]["attachments"][0]["url"]
        .as_str()
        .unwrap()
        .contains("sig="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_svg_and_executables_are_refused_text_is_accepted() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let cases: [(&str, &[u8]); 4] = [
        (
            "x.html",
            b"<!doctype html><html><script>alert(1)</script></html>",
        ),
        (
            "x.svg",
            b"<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"/>",
        ),
        (
            "x.png",
            b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0\x01\0\0\0",
        ),
        (
            "x.txt",
            b"MZ\x90\0\x03\0\0\0\x04\0\0\0\xff\xff\0\0\xb8\0\0\0\0\0\0\0@\0\0\0",
        ),
    ];
    for (name, bytes) in cases {
        let r = upload(&c, &s, name, "image/png", bytes.to_vec()).await;
        assert_error(&r, 415, "unsupported_media_type");
    }
    let r = upload(
        &c,
        &s,
        "notes.txt",
        "application/octet-stream",
        "Grüße\n".as_bytes().to_vec(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["contentType"], "text/plain");
    // Looks like text at first, but is not UTF-8 further on.
    let mut bad = vec![b'a'; 20_000];
    bad.push(0xFF);
    let r = upload(&c, &s, "bad.txt", "text/plain", bad).await;
    assert_error(&r, 415, "unsupported_media_type");
    // Empty files and a missing name are refused; names are sanitised.
    assert_error(
        &upload(&c, &s, "e.txt", "text/plain", vec![]).await,
        422,
        "validation_failed",
    );
    let r = c
        .request(
            "POST",
            "/v1/attachments",
            &[("authorization", &s.bearer())],
            Some(PNG.to_vec()),
        )
        .await;
    assert_invalid(&r, "filename");
    let r = upload(
        &c,
        &s,
        "..%2F..%2Fetc%2Fx%0A.png",
        "image/png",
        PNG.to_vec(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["filename"], "x.png");
    // No session: 401.
    let r = c
        .request(
            "POST",
            "/v1/attachments?filename=a.png",
            &[],
            Some(PNG.to_vec()),
        )
        .await;
    assert_error(&r, 401, "invalid_session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits_hold_while_streaming() {
    let small = "[tenants.attachments]\nmax_bytes = 20000\n";
    let gw = Gateway::start(&config_toml(small)).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let mut at_limit = vec![b'x'; 20_000];
    at_limit[0] = b'a';
    assert_eq!(
        upload(&c, &s, "a.txt", "text/plain", at_limit.clone())
            .await
            .status,
        201
    );
    at_limit.push(b'y');
    let r = upload(&c, &s, "b.txt", "text/plain", at_limit.clone()).await;
    assert_error(&r, 413, "payload_too_large");
    let r = upload_multipart(&c, "/v1/attachments", &s.bearer(), "c.txt", &at_limit).await;
    assert_error(&r, 413, "payload_too_large");
    // A body announced as larger gets its 413 before it is sent, not after.
    let head = format!(
        "POST /v1/attachments?filename=d.txt HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
         Content-Type: text/plain\r\nContent-Length: 20000000\r\n\r\nx",
        s.bearer()
    );
    let text = raw_answer(gw.addr, &head, "payload_too_large").await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");

    // Defaults: 10 MiB, so a 5 MB file passes (the JSON body limit does not apply).
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let mut big = PNG.to_vec();
    big.resize(5_000_000, 7);
    let r = upload(&c, &s, "big.png", "image/png", big.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["size"], 5_000_000);
    assert_eq!(r.json["sha256"], hex_sha(&big));
    let got = c.get(r.json["url"].as_str().unwrap(), &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(header(&got, "content-length"), "5000000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_rules() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let (s, other) = (c.session(PK).await, c.session(PK).await);
    let mine = upload(&c, &s, "a.png", "image/png", PNG.to_vec()).await;
    let theirs = upload(&c, &other, "b.png", "image/png", PNG.to_vec()).await;
    let (mine, theirs) = (
        mine.json["id"].as_str().unwrap().to_owned(),
        theirs.json["id"].as_str().unwrap().to_owned(),
    );
    let r = send_files(&c, &s, "x", &[&mine, &theirs], "c1").await;
    assert_invalid(&r, "attachments[1]");
    let r = send_files(
        &c,
        &s,
        "x",
        &[&mine, "att_00000000000000000000000000000000"],
        "c1",
    )
    .await;
    assert_invalid(&r, "attachments[1]");
    let r = send_files(&c, &s, "x", &["nope"], "c1").await;
    assert_invalid(&r, "attachments[0]");
    let eleven: Vec<&str> = (0..11).map(|_| mine.as_str()).collect();
    assert_invalid(&send_files(&c, &s, "x", &eleven, "c1").await, "attachments");
    assert_invalid(&send_files(&c, &s, " ", &[], "c1").await, "message");
    assert!(
        c.history(&s)
            .await
            .iter()
            .all(|m| m["clientMessageId"] != "c1"),
        "nothing stored"
    );

    let ok = send_files(&c, &s, "here", &[&mine], "c1").await;
    assert_eq!(ok.status, 201, "{}", ok.text);
    // A retry gets the duplicate answer; another message cannot send it again.
    let again = send_files(&c, &s, "here", &[&mine], "c1").await;
    assert_eq!(
        (again.status, again.json["duplicate"].as_bool()),
        (200, Some(true))
    );
    assert_eq!(again.json["messageId"], ok.json["messageId"]);
    assert_invalid(
        &send_files(&c, &s, "again", &[&mine], "c2").await,
        "attachments[0]",
    );

    // The visitor socket and the agent's reply take attachments too.
    let (mut ws, _) = Ws::open(gw.addr, "/v1/visitor/ws", &s.token, None).await;
    let w = upload(&c, &s, "w.png", "image/png", PNG.to_vec()).await;
    ws.send_json(&json!({"type": "message", "message": "", "clientMessageId": "w1", "attachments": [w.json["id"]]}))
        .await;
    let ack = ws.next_of(&["ack", "error"]).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ws.send_json(&json!({"type": "message", "message": "", "clientMessageId": "w2", "attachments": [w.json["id"]]}))
        .await;
    let err = ws.next_of(&["ack", "error"]).await;
    assert_eq!(
        (err["type"].as_str(), err["field"].as_str()),
        (Some("error"), Some("attachments[0]"))
    );

    let path = format!(
        "/v1/tenant/conversations/{}/attachments?filename=offer.pdf",
        s.conversation_id
    );
    let a = c
        .request(
            "POST",
            &path,
            &[
                ("authorization", &bearer(&acme_agent("ann"))),
                ("content-type", "application/pdf"),
            ],
            Some(pdf()),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    // Another tenant's key cannot upload into acme's conversation.
    let x = c
        .request(
            "POST",
            &path,
            &[("authorization", &bearer(SERVER_KEY2))],
            Some(pdf()),
        )
        .await;
    assert_error(&x, 404, "conversation_not_found");
    let reply = c
        .post_auth(
            &format!("/v1/tenant/conversations/{}/messages", s.conversation_id),
            &acme_agent("ann"),
            &json!({"attachments": [a.json["id"]], "clientMessageId": "r1"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let m = loop {
        let m = ws.next_of(&["message:new"]).await;
        if m["data"]["clientMessageId"] == "r1" {
            break m;
        }
    };
    let url = m["data"]["attachments"][0]["url"].as_str().unwrap();
    let got = c.get(url, &[]).await;
    assert_eq!((got.status, got.text.as_bytes()), (200, pdf().as_slice()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_expire_and_tampering_falls_back_to_credentials() {
    let (gw, clock) = start_clocked(&config_toml("")).await;
    let c = gw.client();
    let (s, other) = (c.session(PK).await, c.session(PK).await);
    let up = upload(&c, &s, "a.png", "image/png", PNG.to_vec()).await;
    let id = up.json["id"].as_str().unwrap().to_owned();
    let url = up.json["url"].as_str().unwrap().to_owned();
    let plain = format!("/v1/attachments/{id}");
    assert_eq!(c.get(&url, &[]).await.status, 200);
    // Tampered signature or expiry: no longer a capability.
    let tampered = format!("{}A", url);
    assert_error(&c.get(&tampered, &[]).await, 404, "not_found");
    let exp: i64 = url
        .split("exp=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let later = url.replace(&format!("exp={exp}"), &format!("exp={}", exp + 3600));
    assert_error(&c.get(&later, &[]).await, 404, "not_found");
    // …but a credential still opens it.
    assert_eq!(
        c.get(&tampered, &[("authorization", &s.bearer())])
            .await
            .status,
        200
    );
    // Each credential rule.
    assert_error(&c.get(&plain, &[]).await, 404, "not_found");
    assert_eq!(
        c.get(&plain, &[("authorization", &s.bearer())])
            .await
            .status,
        200
    );
    assert_eq!(
        c.get(&format!("{plain}?sessionToken={}", s.token), &[])
            .await
            .status,
        200
    );
    assert_error(
        &c.get(&plain, &[("authorization", &other.bearer())]).await,
        404,
        "not_found",
    );
    assert_eq!(c.get_auth(&plain, &acme_agent("ann")).await.status, 200);
    assert_eq!(c.get_auth(&plain, SERVER_KEY).await.status, 200);
    assert_error(&c.get_auth(&plain, SERVER_KEY2).await, 404, "not_found");
    assert_error(
        &c.get_auth(&plain, &agent_jwt(AGENT_SECRET2, "globex", "g"))
            .await,
        404,
        "not_found",
    );
    // Expiry: after attachment_url_ttl_secs the link is dead; a fresh one is minted on read.
    clock.advance(3601 * 1000);
    assert_error(&c.get(&url, &[]).await, 404, "not_found");
    assert_eq!(
        c.get(&plain, &[("authorization", &s.bearer())])
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_headers_304_and_206() {
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let s = c.session(PK).await;
    let up = upload(&c, &s, "a%20b.png", "image/png", PNG.to_vec()).await;
    let url = up.json["url"].as_str().unwrap().to_owned();
    let r = c.get(&url, &[]).await;
    assert_eq!(r.status, 200);
    let etag = header(&r, "etag").to_owned();
    assert_eq!(etag, format!("\"{}\"", hex_sha(PNG)));
    assert_eq!(header(&r, "x-content-type-options"), "nosniff");
    assert_eq!(header(&r, "content-security-policy"), "sandbox");
    assert_eq!(
        header(&r, "content-disposition"),
        "attachment; filename=\"a b.png\"; filename*=UTF-8''a%20b.png"
    );
    let r = c.get(&format!("{url}&disposition=inline"), &[]).await;
    assert!(header(&r, "content-disposition").starts_with("inline;"));
    assert_invalid(
        &c.get(&format!("{url}&disposition=bogus"), &[]).await,
        "disposition",
    );
    let r = c.get(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, 304);
    assert!(r.text.is_empty());
    let r = c.get(&url, &[("range", "bytes=0-7")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(
        header(&r, "content-range"),
        format!("bytes 0-7/{}", PNG.len())
    );
    assert_eq!(header(&r, "content-length"), "8");
    let r = c.get(&url, &[("range", "bytes=-4")]).await;
    assert_eq!((r.status, header(&r, "content-length")), (206, "4"));
    let r = c.get(&url, &[("range", "bytes=9999-")]).await;
    assert_error(&r, 416, "range_not_satisfiable");
    assert_eq!(
        header(&r, "content-range"),
        format!("bytes */{}", PNG.len())
    );
    // Plain text may be inline; with its charset.
    let t = upload(&c, &s, "n.txt", "text/plain", b"hello".to_vec()).await;
    let r = c
        .get(
            &format!("{}&disposition=inline", t.json["url"].as_str().unwrap()),
            &[],
        )
        .await;
    assert_eq!(header(&r, "content-type"), "text/plain; charset=utf-8");
    assert!(header(&r, "content-disposition").starts_with("inline;"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_rate_limited_per_session() {
    let toml = config_toml("").replace(
        "events_per_minute_per_session = 100000\n",
        "events_per_minute_per_session = 100000\nuploads_per_hour_per_session = 2\n",
    );
    let gw = Gateway::start(&toml).await;
    let c = gw.client();
    let s = c.session(PK).await;
    for _ in 0..2 {
        assert_eq!(
            upload(&c, &s, "a.png", "image/png", PNG.to_vec())
                .await
                .status,
            201
        );
    }
    let r = upload(&c, &s, "a.png", "image/png", PNG.to_vec()).await;
    assert_error(&r, 429, "rate_limited");
    assert!(!header(&r, "retry-after").is_empty());
    let other = c.session(PK).await;
    assert_eq!(
        upload(&c, &other, "a.png", "image/png", PNG.to_vec())
            .await
            .status,
        201
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_uploads_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml("").replace(
        "store = \"memory\"",
        &format!(
            "store = \"sqlite:{}\"",
            dir.path().join("data/confab.db").display()
        ),
    );
    let config = dir.path().join("confab.toml");
    std::fs::write(&config, toml).unwrap();
    let mut gw = Process::spawn(&config, &[]);
    let c = gw.client();
    let s = c.session(PK).await;
    let mut big = PNG.to_vec();
    big.resize(1_500_000, 3);
    let up = upload(&c, &s, "a.png", "image/png", big.clone()).await;
    assert_eq!(up.status, 201, "{}", up.text);
    let id = up.json["id"].as_str().unwrap().to_owned();
    let sent = send_files(&c, &s, "", &[&id], "k1").await;
    assert_eq!(sent.status, 201);
    let unsent = upload(&c, &s, "b.png", "image/png", PNG.to_vec()).await;
    assert_eq!(unsent.status, 201);
    gw.kill9();

    let gw = Process::spawn(&config, &[]);
    let c = gw.client();
    // Beside the database, as documented.
    assert!(dir.path().join("data/attachments/acme").join(&id).exists());
    let got = c
        .get(
            &format!("/v1/attachments/{id}"),
            &[("authorization", &s.bearer())],
        )
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(header(&got, "etag"), format!("\"{}\"", hex_sha(&big)));
    let unsent_id = unsent.json["id"].as_str().unwrap();
    let got = c
        .get(
            &format!("/v1/attachments/{unsent_id}"),
            &[("authorization", &s.bearer())],
        )
        .await;
    assert_eq!(got.status, 200);
    // Still sendable after the restart.
    let r = send_files(&c, &s, "", &[unsent_id], "k2").await;
    assert_eq!(r.status, 201, "{}", r.text);
}
