//! A minimal keep-alive HTTP/1.1 client: one hyper connection per [`HttpClient`], owned
//! by one worker task, reconnected when the server closes it. Load workers each hold one,
//! so "concurrency" is exactly the number of sockets and in-flight requests.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

use crate::net::{self, Endpoint};

/// The longest a request may take (long-polls use at most 30 s of `wait`).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(40);

/// A finished request: status and the whole body.
#[derive(Debug)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The collected body.
    pub body: Bytes,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("response body is not JSON")
    }

    /// A short description for failure tallies: `429 rate_limited`.
    pub fn failure(&self, what: &str) -> String {
        let code = self
            .json()
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
            .unwrap_or_default();
        format!("{what}: HTTP {} {code}", self.status)
    }
}

/// One keep-alive connection to one endpoint, bound to one local address.
pub struct HttpClient {
    /// Where requests go.
    endpoint: Arc<Endpoint>,
    /// Source address to bind to, if any.
    local: Option<IpAddr>,
    /// The live connection; `None` until the first request or after an error.
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HttpClient {
    /// A client that connects lazily on its first request.
    pub fn new(endpoint: Arc<Endpoint>, local: Option<IpAddr>) -> Self {
        Self {
            endpoint,
            local,
            sender: None,
        }
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>> {
        let stream = net::connect(self.local, self.endpoint.addr)
            .await
            .with_context(|| format!("connecting to {}", self.endpoint.addr))?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the server closes; errors surface on the
            // next request instead.
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends one request and collects the response. A request that fails on a reused
    /// connection (the server may have closed it while idle) is retried once on a fresh one.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Bytes>,
    ) -> Result<Response> {
        let reused = self.sender.is_some();
        match self
            .try_request(method.clone(), path, bearer, body.clone())
            .await
        {
            Ok(r) => Ok(r),
            Err(_) if reused => {
                self.sender = None;
                self.try_request(method, path, bearer, body).await
            }
            Err(e) => Err(e),
        }
    }

    async fn try_request(
        &mut self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Bytes>,
    ) -> Result<Response> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = Some(self.connect().await?);
        }
        let sender = self.sender.as_mut().expect("just connected");
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.endpoint.authority)
            .header("user-agent", "confab-loadtest");
        if let Some(token) = bearer {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        let exchange = async {
            sender.ready().await?;
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok(Response { status, body })
        };
        let result = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!(
                "no response within {}s",
                REQUEST_TIMEOUT.as_secs()
            )),
        };
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str, bearer: Option<&str>) -> Result<Response> {
        self.request(Method::GET, path, bearer, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(
        &mut self,
        path: &str,
        bearer: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<Response> {
        let bytes = Bytes::from(serde_json::to_vec(body)?);
        self.request(Method::POST, path, bearer, Some(bytes)).await
    }
}
