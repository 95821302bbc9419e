//! Serves the component in the file named by the first argument with
//! keybust's library (its `Service`, as `keybust serve` runs it), on a
//! loopback port, and checks two answers over real
//! HTTP: a CORS preflight (204) and a POST without a token (401).

use keybust::capabilities::Settings;
use keybust::capabilities::cache::{CacheBackendSettings, CacheSettings};
use keybust::rollout::source::ComponentSource;
use keybust::serve::endpoint::{ENDPOINT_PATH, EndpointConfig};
use keybust::service::{Listeners, Service, ServiceConfig};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: keybust-outside COMPONENT.wasm"))?;
    let bytes = std::fs::read(&path)?;
    let settings = Settings {
        cache: CacheSettings {
            backend: CacheBackendSettings::Embedded,
            ..CacheSettings::default()
        },
        ..Settings::default()
    };
    let service = Service::build(ServiceConfig {
        listen: "127.0.0.1:0".parse()?,
        admin: None,
        component: ComponentSource::Bytes { bytes, label: path },
        follow_interval: None,
        tls: None,
        settings,
        endpoint: EndpointConfig::default(),
        shutdown_delay: Duration::ZERO,
        shutdown_grace: Duration::from_secs(1),
        listeners: Listeners::default(),
    })
    .await?;
    let addr = service.local_addr()?;
    tokio::spawn(service.run(std::future::pending()));
    let preflight = status(
        addr,
        &format!(
            "OPTIONS {ENDPOINT_PATH} HTTP/1.1\r\nHost: localhost\r\nOrigin: https://worldmonitor.app\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
        ),
    )
    .await?;
    let unauthenticated = status(
        addr,
        &format!(
            "POST {ENDPOINT_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .await?;
    anyhow::ensure!(
        (preflight, unauthenticated) == (204, 401),
        "expected 204 and 401, got {preflight} and {unauthenticated}"
    );
    println!("keybust-outside: preflight {preflight}, unauthenticated {unauthenticated}");
    Ok(())
}

/// The status code of the answer to `request`.
async fn status(addr: std::net::SocketAddr, request: &str) -> anyhow::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(30), stream.read_exact(&mut head)).await??;
    Ok(std::str::from_utf8(&head[9..12])?.parse()?)
}
