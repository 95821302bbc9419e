//! The Convex call's HTTP client: reqwest (what keybust uses, built as
//! `capabilities::outbound` builds it) against hyper-util's pooled client
//! over plain hyper, both keeping connections alive, side by side in one
//! run against one loopback stand-in answering as Convex does.
//!
//! Each round times a run of sequential calls (one connection, the latency
//! a request adds) and a run of 64 concurrent callers (the pool under
//! load), first with one client then the other; medians over the rounds
//! are printed with their ratio.
//!
//! Run: `cargo bench -p keybust-host --bench convex_client`

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROUNDS: usize = 7;
const SEQUENTIAL: usize = 2000;
const CONCURRENT_TASKS: usize = 64;
const CONCURRENT_CALLS: usize = 100;
const ANSWER: &str = r#"{"userId":"user_owner"}"#;
const MAX_BODY: usize = 256 * 1024;

/// One way to make the call keybust makes: POST JSON with the shared
/// secret, read the whole (bounded) answer.
trait Caller: Send + Sync + 'static {
    fn call(&self, url: &str) -> impl Future<Output = anyhow::Result<(u16, Bytes)>> + Send;
}

struct Reqwest(reqwest::Client);

impl Caller for Reqwest {
    async fn call(&self, url: &str) -> anyhow::Result<(u16, Bytes)> {
        let response = self
            .0
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-convex-shared-secret", "bench-secret")
            .body(r#"{"keyHash":"0123"}"#)
            .send()
            .await?;
        let status = response.status().as_u16();
        let body = Limited::new(reqwest::Body::from(response), MAX_BODY)
            .collect()
            .await
            .map_err(|err| anyhow::anyhow!("{err}"))?
            .to_bytes();
        Ok((status, body))
    }
}

struct Hyper(HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>);

impl Caller for Hyper {
    async fn call(&self, url: &str) -> anyhow::Result<(u16, Bytes)> {
        let request = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-convex-shared-secret", "bench-secret")
            .body(Full::new(Bytes::from_static(br#"{"keyHash":"0123"}"#)))?;
        let response = self.0.request(request).await?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|err| anyhow::anyhow!("{err}"))?
            .to_bytes();
        Ok((status, body))
    }
}

/// A loopback HTTP/1.1 server answering every request as Convex's owner
/// lookup does.
async fn stand_in() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service =
                    service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                        let _ = request.into_body().collect().await;
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header(http::header::CONTENT_TYPE, "application/json")
                                .body(Full::new(Bytes::from_static(ANSWER.as_bytes())))
                                .expect("a valid response"),
                        )
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Mean time per call over `SEQUENTIAL` calls made one after another.
async fn sequential(caller: &impl Caller, url: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for _ in 0..SEQUENTIAL {
        check(caller.call(url).await?)?;
    }
    Ok(started.elapsed() / SEQUENTIAL as u32)
}

/// Calls per second with `CONCURRENT_TASKS` callers making
/// `CONCURRENT_CALLS` calls each.
async fn concurrent<C: Caller>(caller: &Arc<C>, url: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(CONCURRENT_TASKS);
    for _ in 0..CONCURRENT_TASKS {
        let (caller, url) = (caller.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            for _ in 0..CONCURRENT_CALLS {
                check(caller.call(&url).await?)?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok((CONCURRENT_TASKS * CONCURRENT_CALLS) as f64 / started.elapsed().as_secs_f64())
}

fn check((status, body): (u16, Bytes)) -> anyhow::Result<()> {
    anyhow::ensure!(
        status == 200 && body == ANSWER.as_bytes(),
        "unexpected answer {status}"
    );
    Ok(())
}

fn median<T: PartialOrd + Copy>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    values[values.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let url = format!("http://{}/api/internal-get-key-owner", stand_in().await?);
        // As `capabilities::outbound::outbound_client` builds it.
        let reqwest = Arc::new(Reqwest(
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(1))
                .pool_idle_timeout(Duration::from_secs(90))
                .tcp_nodelay(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
        ));
        // As `capabilities::outbound::pooled_client` builds it.
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        connector.set_keepalive(Some(Duration::from_secs(15)));
        connector.set_keepalive_interval(Some(Duration::from_secs(15)));
        connector.set_keepalive_retries(Some(3));
        connector.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .try_with_platform_verifier()?
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let hyper = Arc::new(Hyper(
            HyperClient::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .build(https),
        ));
        // Warm both pools.
        sequential(&*reqwest, &url).await?;
        sequential(&*hyper, &url).await?;

        let (mut seq_r, mut seq_h, mut con_r, mut con_h) = (vec![], vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            seq_r.push(sequential(&*reqwest, &url).await?);
            seq_h.push(sequential(&*hyper, &url).await?);
            con_r.push(concurrent(&reqwest, &url).await?);
            con_h.push(concurrent(&hyper, &url).await?);
        }
        let (seq_r, seq_h) = (median(seq_r), median(seq_h));
        let (con_r, con_h) = (median(con_r), median(con_h));
        println!("medians of {ROUNDS} interleaved rounds:");
        println!(
            "sequential, per call:         reqwest {seq_r:>9.1?}   hyper {seq_h:>9.1?}   reqwest/hyper {:.2}x",
            seq_r.as_secs_f64() / seq_h.as_secs_f64()
        );
        println!(
            "{CONCURRENT_TASKS} callers, calls per second: reqwest {con_r:>9.0}   hyper {con_h:>9.0}   reqwest/hyper {:.2}x",
            con_r / con_h
        );
        Ok(())
    })
}
