//! `GET /openapi.json` is the committed `docs/openapi.json`, byte for byte, and describes
//! every route the gateway serves.
//!
//! After changing a route or a wire type, regenerate the file with
//! `CONFAB_UPDATE_OPENAPI=1 cargo test -p confab-gateway --test openapi` and commit it.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::Value;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
}

#[tokio::test]
async fn served_document_is_the_committed_one() {
    let gw = Gateway::start(&config_toml("")).await;
    let r = gw.client().get("/openapi.json", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/json",
        "{:?}",
        r.headers
    );
    let path = committed_path();
    if std::env::var_os("CONFAB_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &r.text).expect("write docs/openapi.json");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == r.text,
        "docs/openapi.json differs from GET /openapi.json: regenerate it with \
         `CONFAB_UPDATE_OPENAPI=1 cargo test -p confab-gateway --test openapi` and commit it"
    );
}

#[tokio::test]
async fn every_route_is_described() {
    let gw = Gateway::start(&config_toml("")).await;
    let doc = gw.client().get("/openapi.json", &[]).await.json;
    assert_eq!(doc["openapi"], "3.1.0");
    let routes = [
        ("get", "/v1/config"),
        ("post", "/v1/sessions"),
        ("get", "/v1/messages"),
        ("post", "/v1/messages"),
        ("post", "/v1/events"),
        ("post", "/v1/read"),
        ("post", "/v1/handoff"),
        ("post", "/v1/voice"),
        ("post", "/v1/attachments"),
        ("get", "/v1/attachments/{id}"),
        ("post", "/v1/tenant/conversations/{id}/attachments"),
        ("get", "/v1/visitor/ws"),
        ("get", "/v1/tenant/ws"),
        ("get", "/v1/tenant/conversations"),
        ("get", "/v1/tenant/conversations/{id}"),
        ("get", "/v1/tenant/conversations/{id}/messages"),
        ("post", "/v1/tenant/conversations/{id}/messages"),
        ("post", "/v1/tenant/conversations/{id}/close"),
        ("post", "/v1/tenant/conversations/{id}/reopen"),
        ("post", "/v1/tenant/conversations/{id}/read"),
        ("post", "/v1/tenant/conversations/{id}/handler"),
        ("get", "/v1/tenant/events"),
        ("post", "/v1/tenant/events"),
        ("get", "/v1/tenant/webhooks"),
        ("get", "/"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/widget.js"),
        ("get", "/demo"),
        ("get", "/demo.js"),
        ("get", "/console"),
        ("get", "/console.js"),
        ("get", "/openapi.json"),
    ];
    let paths = doc["paths"].as_object().unwrap();
    let described: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(described, routes.len(), "{:?}", paths.keys());
    for (method, path) in routes {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not described");
        // Every operation that can fail says how, with the one error body.
        for (status, resp) in op["responses"].as_object().unwrap() {
            if status.starts_with('4') || status.starts_with('5') {
                let resp = match resp["$ref"].as_str() {
                    Some(r) => &doc["components"]["responses"][r.rsplit('/').next().unwrap()],
                    None => resp,
                };
                let expected = if status == "422" {
                    "#/components/schemas/ValidationErrorBody"
                } else {
                    "#/components/schemas/ErrorBody"
                };
                assert_eq!(
                    resp["content"]["application/json"]["schema"]["$ref"], expected,
                    "{method} {path} {status}"
                );
            }
        }
    }
    // Every reference resolves.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let pointer = r.strip_prefix('#').expect("a local reference");
        assert!(doc.pointer(pointer).is_some(), "dangling {r}");
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for s in ["visitorSession", "agentJwt", "serverKey"] {
        assert_eq!(schemes[s]["scheme"], "bearer", "{s}");
    }
    // The stateful path a fuzzer follows: config → session → send → history.
    let link = |path: &str, method: &str, status: &str| -> Vec<String> {
        doc["paths"][path][method]["responses"][status]["links"]
            .as_object()
            .map(|l| {
                l.values()
                    .map(|v| v["operationId"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(link("/v1/config", "get", "200").contains(&"startSession".into()));
    assert!(link("/v1/sessions", "post", "201").contains(&"sendMessage".into()));
    assert!(link("/v1/messages", "post", "201").contains(&"listMessages".into()));
    let ops: Vec<&Value> = paths
        .values()
        .flat_map(|p| p.as_object().unwrap().values())
        .collect();
    for target in ["startSession", "sendMessage", "listMessages"] {
        assert!(ops.iter().any(|o| o["operationId"] == target), "{target}");
    }
}

/// The pages spliced from stored JSON read back as the types that describe them.
#[tokio::test]
async fn spliced_pages_are_their_described_types() {
    use confab_gateway::http::tenant::EventsPage;
    use confab_gateway::http::MessagesPage;
    let gw = Gateway::start(&config_toml("")).await;
    let c = gw.client();
    let s = c.session(PK).await;
    assert_eq!(c.send(&s, "hello", Some("c-1")).await.status, 201);
    let r = c.get_auth("/v1/messages", &s.token).await;
    let page: MessagesPage = serde_json::from_value(r.json).unwrap();
    assert!(!page.messages.is_empty());
    assert_eq!(
        page.next_cursor.as_ref(),
        page.messages.last().map(|m| &m.id)
    );
    let r = c.tenant_events(SERVER_KEY, None).await;
    let page: EventsPage = serde_json::from_value(r.json).unwrap();
    assert!(page.events.iter().any(|e| e.kind == "message:new"));
}
