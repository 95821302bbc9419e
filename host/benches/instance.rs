//! Per-request cost in isolation, without HTTP or a load generator:
//! instantiating the endpoint component into a fresh store (the store made
//! and dropped outside the timing), the whole store lifecycle around it, and
//! a request end to end: instantiate plus one CORS preflight answered by the
//! component (wasi:http request in, response and body out) as keybust runs
//! it. One thread, after a warm-up; prints min, median and p90 of each.
//!
//! Run: `cargo bench -p keybust-host --bench instance`
//!
//! `BENCH_COMPONENTS=a.wasm,b.wasm` times the instantiation of other
//! wasi:http components beside it, in turn, to weigh what a component's
//! imports cost (a std-built guest imports `wasi:cli` as well).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use keybust::capabilities::{Capabilities, Settings};
use keybust::limits::Limits;
use keybust::runtime::engine;
use keybust::runtime::plugin::EMBEDDED_COMPONENT;
use keybust::serve::endpoint::ENDPOINT_PATH;
use keybust::versions::slot::{Admission, ComponentSlot, Provenance};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WARMUP: usize = 2_000;
const ROUNDS: usize = 20_000;

fn report(name: &str, mut samples: Vec<Duration>, target: Duration) {
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    let median = at(0.5);
    println!(
        "{name:>27}: n={} min={:>8.2?} median={:>8.2?} p90={:>8.2?}  target median <= {target:?} ({:.2}x of target)",
        samples.len(),
        samples[0],
        median,
        at(0.9),
        median.as_secs_f64() / target.as_secs_f64(),
    );
}

fn preflight() -> hyper::Request<Empty<Bytes>> {
    hyper::Request::builder()
        .method("OPTIONS")
        .uri(format!("http://localhost{ENDPOINT_PATH}"))
        .header("origin", "https://worldmonitor.app")
        .header("access-control-request-method", "POST")
        .body(Empty::new())
        .expect("a valid request")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::default();
    let capabilities = Arc::new(Capabilities::from_settings(&settings)?);
    let limits = Arc::new(Limits::default());
    let engine = engine::new_engine(&limits)?;
    let linker = engine::new_linker(&engine)?;
    let slot = ComponentSlot::new(
        linker,
        None,
        capabilities.clone(),
        limits.clone(),
        EMBEDDED_COMPONENT.to_vec(),
        Provenance::unchecked("embedded"),
        Admission::default(),
    )
    .await?;
    let plugin = slot.current().plugin.clone();

    let instantiate = instantiations(&plugin, &capabilities, &limits).await?;

    let mut lifecycle = Vec::with_capacity(ROUNDS);
    for round in 0..WARMUP + ROUNDS {
        let started = Instant::now();
        plugin.probe().await?;
        if round >= WARMUP {
            lifecycle.push(started.elapsed());
        }
    }

    let mut handled = Vec::with_capacity(ROUNDS);
    for round in 0..WARMUP + ROUNDS {
        let started = Instant::now();
        let response = plugin
            .handle(preflight(), ())
            .await
            .map_err(|failure| anyhow::anyhow!("preflight failed: {failure:?}"))?;
        let status = response.status();
        response.into_body().collect().await?;
        if round >= WARMUP {
            handled.push(started.elapsed());
        }
        anyhow::ensure!(status == 204, "preflight answered {status}");
    }

    let mut others = Vec::new();
    let others_linker = engine::new_linker(&engine)?;
    for path in std::env::var("BENCH_COMPONENTS")
        .unwrap_or_default()
        .split(',')
        .filter(|path| !path.is_empty())
    {
        let bytes = std::fs::read(path)?;
        let (other, _) = keybust::runtime::Plugin::load(
            &others_linker,
            None,
            &bytes,
            capabilities.clone(),
            limits.clone(),
        )?;
        let samples = instantiations(&other, &capabilities, &limits).await?;
        others.push((path.to_owned(), bytes.len(), samples));
    }

    println!(
        "endpoint component ({} bytes), one thread:",
        EMBEDDED_COMPONENT.len()
    );
    report("instantiate", instantiate, Duration::from_micros(10));
    report(
        "store + instantiate + drop",
        lifecycle,
        Duration::from_micros(10),
    );
    report(
        "instantiate + preflight",
        handled,
        Duration::from_micros(30),
    );
    for (path, size, samples) in others {
        println!("{path} ({size} bytes):");
        report("instantiate", samples, Duration::from_micros(10));
    }
    Ok(())
}

/// Times instantiating `plugin` into a fresh store (made and dropped
/// outside the timing), after a warm-up.
async fn instantiations(
    plugin: &keybust::runtime::Plugin,
    capabilities: &Arc<Capabilities>,
    limits: &Limits,
) -> anyhow::Result<Vec<Duration>> {
    let pre = plugin.proxy_pre();
    let mut samples = Vec::with_capacity(ROUNDS);
    for round in 0..WARMUP + ROUNDS {
        let mut store =
            keybust::runtime::store::new_store(plugin.engine(), capabilities.clone(), limits);
        let started = Instant::now();
        pre.instantiate_async(&mut store)
            .await
            .map_err(|err| anyhow::anyhow!("{err:#}"))?;
        let took = started.elapsed();
        drop(store);
        if round >= WARMUP {
            samples.push(took);
        }
    }
    Ok(samples)
}
