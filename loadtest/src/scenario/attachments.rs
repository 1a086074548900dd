//! `attachments`: upload and download throughput of one file size, and the gateway's
//! memory while many uploads stream at once (issue 12). Each worker has its own session
//! (one upload per session and round, so the per-session upload limit of a real tenant
//! config is the only one that matters: raise `uploads_per_hour_per_session`), uploads a
//! random file of `--size-mb` as a raw body, sends it in a message, then downloads it
//! with the session as credential and checks every byte. With `--server-pid` the gateway's
//! RSS is sampled every 20 ms during the uploads (peak minus idle: what a streamed upload
//! costs), and its CPU per MB is reported. The machine's ceiling is `cat FILE >
//! /dev/null` of the same bytes, timed here.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::Method;
use rand::RngCore;
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use super::{create_sessions, source_pool, Endpoints};
use crate::api::Session;
use crate::cli::AttachmentsArgs;
use crate::http::HttpClient;
use crate::report::{self, Meter, Table};

/// What one run measured.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Figures {
    files: usize,
    size_bytes: usize,
    upload_mb_per_sec: f64,
    download_mb_per_sec: f64,
    cat_mb_per_sec: f64,
    server_cpu_us_per_mb_up: Option<f64>,
    server_cpu_us_per_mb_down: Option<f64>,
    idle_rss_kib: Option<u64>,
    peak_rss_kib_during_uploads: Option<u64>,
}

/// Runs the scenario. Returns the JSON document (also printed with `--json`).
pub async fn run(args: AttachmentsArgs) -> Result<serde_json::Value> {
    let params = report::mask_secrets(serde_json::to_value(&args)?);
    report::print_params("attachments", &params, args.common.json);
    let endpoints = Endpoints::resolve(&args.common).await?;
    let pool = source_pool(&args.common, args.concurrency * 2, 0);
    let creds = args.common.creds();
    let n = args.concurrency * args.rounds;
    let sessions: Vec<Session> = create_sessions(&endpoints, &pool, &creds, n, 16, None)
        .await
        .into_iter()
        .collect::<Result<_>>()
        .context("creating sessions")?;
    let size = args.size_mb * 1024 * 1024;
    let mut file = vec![0u8; size];
    rand::rng().fill_bytes(&mut file);
    // Random bytes sniff as nothing in particular: give the file a PDF header so the
    // default allowed types accept it.
    file[..8].copy_from_slice(b"%PDF-1.7");
    let file = Bytes::from(file);
    let cat = cat_ceiling(&file)?;

    let pid = args.common.server_pids.first().copied();
    let idle = pid.and_then(report::proc_stat).map(|s| s.rss_kib);
    let peak = Arc::new(AtomicU64::new(idle.unwrap_or(0)));
    let sampling = pid.map(|pid| {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                if let Some(s) = report::proc_stat(pid) {
                    peak.fetch_max(s.rss_kib, Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });

    // Uploads: `concurrency` at a time, `rounds` times.
    let meter = Meter::start(&args.common.server_pids);
    let started = Instant::now();
    let mut uploaded: Vec<(Session, String)> = Vec::with_capacity(n);
    for round in 0..args.rounds {
        let mut tasks = Vec::with_capacity(args.concurrency);
        for w in 0..args.concurrency {
            let s = sessions[round * args.concurrency + w].clone();
            let ep = endpoints.main(w).clone();
            let local = pool.next_for(&ep.addr);
            let file = file.clone();
            tasks.push(tokio::spawn(async move {
                let mut http = HttpClient::new(ep, local);
                let id = upload(&mut http, &s, file).await?;
                send(&mut http, &s, &id).await?;
                anyhow::Ok((s, id))
            }));
        }
        for t in tasks {
            uploaded.push(t.await??);
        }
    }
    let up_secs = started.elapsed().as_secs_f64();
    let up_usage = meter.finish((n * args.size_mb) as u64, "MB");
    if let Some(s) = sampling {
        s.abort();
    }
    let peak_rss = pid.map(|_| peak.load(Relaxed));

    // Downloads: the same files, `concurrency` at a time, every byte checked.
    let meter = Meter::start(&args.common.server_pids);
    let started = Instant::now();
    for chunk in uploaded.chunks(args.concurrency) {
        let mut tasks = Vec::with_capacity(chunk.len());
        for (w, (s, id)) in chunk.iter().enumerate() {
            let ep = endpoints.main(w).clone();
            let local = pool.next_for(&ep.addr);
            let (s, id, file) = (s.clone(), id.clone(), file.clone());
            tasks.push(tokio::spawn(async move {
                let mut http = HttpClient::new(ep, local);
                let r = http
                    .get(&format!("/v1/attachments/{id}"), Some(&s.session_token))
                    .await?;
                if r.status != 200 {
                    bail!("{}", r.failure("download"));
                }
                if r.body != file {
                    bail!("download of {id}: the bytes differ from the upload");
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
    }
    let down_secs = started.elapsed().as_secs_f64();
    let down_usage = meter.finish((n * args.size_mb) as u64, "MB");

    let mb = (n * size) as f64 / (1024.0 * 1024.0);
    let figures = Figures {
        files: n,
        size_bytes: size,
        upload_mb_per_sec: mb / up_secs,
        download_mb_per_sec: mb / down_secs,
        cat_mb_per_sec: cat,
        server_cpu_us_per_mb_up: up_usage.server_cpu_us_per_unit,
        server_cpu_us_per_mb_down: down_usage.server_cpu_us_per_unit,
        idle_rss_kib: idle,
        peak_rss_kib_during_uploads: peak_rss,
    };
    if !args.common.json {
        let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
        let kib =
            |v: Option<u64>| v.map_or("-".into(), |v| format!("{:.1} MiB", v as f64 / 1024.0));
        let mut t = Table::new(&["files", "MB each", "up MB/s", "down MB/s", "cat MB/s"]);
        t.row(vec![
            n.to_string(),
            args.size_mb.to_string(),
            report::rate(figures.upload_mb_per_sec),
            report::rate(figures.download_mb_per_sec),
            report::rate(cat),
        ]);
        t.print();
        let mut t = Table::new(&[
            "server µs CPU/MB up",
            "down",
            "idle RSS",
            "peak RSS (uploads)",
        ]);
        t.row(vec![
            opt(figures.server_cpu_us_per_mb_up),
            opt(figures.server_cpu_us_per_mb_down),
            kib(idle),
            kib(peak_rss),
        ]);
        t.print();
    }
    Ok(serde_json::to_value(figures)?)
}

/// `POST /v1/attachments?filename=…` with the file as the raw body; its id.
async fn upload(http: &mut HttpClient, s: &Session, file: Bytes) -> Result<String> {
    let r = http
        .request(
            Method::POST,
            "/v1/attachments?filename=bench.pdf",
            Some(&s.session_token),
            Some(file),
        )
        .await?;
    if r.status != 201 {
        bail!("{}", r.failure("upload"));
    }
    r.json()?["id"]
        .as_str()
        .map(str::to_owned)
        .context("upload answer without an id")
}

/// Sends the upload in a message (a sent file lives as long as its message).
async fn send(http: &mut HttpClient, s: &Session, id: &str) -> Result<()> {
    let r = http
        .post_json(
            "/v1/messages",
            Some(&s.session_token),
            &json!({"message": "", "attachments": [id]}),
        )
        .await?;
    if r.status != 201 {
        bail!("{}", r.failure("send"));
    }
    Ok(())
}

/// MB/s of `cat FILE > /dev/null` for the same bytes (page cache warm: the best any
/// server on this machine could do reading it).
fn cat_ceiling(file: &[u8]) -> Result<f64> {
    let path = std::env::temp_dir().join(format!("confab-loadtest-{}.bin", std::process::id()));
    std::fs::write(&path, file)?;
    let cat = || {
        let t = std::time::Instant::now();
        let status = std::process::Command::new("cat")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "cat failed");
        anyhow::Ok(t.elapsed().as_secs_f64())
    };
    cat()?; // warm the page cache
    let best = (0..5).map(|_| cat()).collect::<Result<Vec<f64>>>()?;
    let _ = std::fs::remove_file(&path);
    let secs = best.into_iter().fold(f64::INFINITY, f64::min);
    Ok(file.len() as f64 / (1024.0 * 1024.0) / secs)
}
