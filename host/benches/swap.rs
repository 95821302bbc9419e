//! Swap latency, from component bytes in hand to the new version serving:
//! cold (never compiled: compile, cache write, probe, swap) against cached
//! (a verified precompiled artifact on disk: load, probe, swap), measured
//! side by side in one run.
//!
//! Run: `cargo bench -p keybust-host --bench swap`

#[path = "../../tests/all/support/variant.rs"]
mod variant;

use keybust::capabilities::{Capabilities, Settings};
use keybust::limits::Limits;
use keybust::runtime::artifacts::ArtifactCache;
use keybust::runtime::engine;
use keybust::runtime::plugin::EMBEDDED_COMPONENT;
use keybust::versions::slot::{Admission, ComponentSlot, Provenance};
use std::sync::Arc;
use std::time::Duration;

const COLD_ROUNDS: usize = 10;
const CACHED_ROUNDS: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let median = percentile(&samples, 0.5);
    println!(
        "{name:>7}: n={:<4} min={:>9.3?} median={:>9.3?} p90={:>9.3?} max={:>9.3?}",
        samples.len(),
        samples[0],
        median,
        percentile(&samples, 0.9),
        samples[samples.len() - 1],
    );
    median
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::default();
    let capabilities = Arc::new(Capabilities::from_settings(&settings)?);
    let limits = Limits::default();
    let engine = engine::new_engine(&limits)?;
    let linker = engine::new_linker(&engine)?;
    let dir = tempfile::tempdir()?;
    let key = keybust::runtime::artifacts::ArtifactKey::ephemeral()?;
    let artifacts = ArtifactCache::open(dir.path().join("cache"), key, &engine)?;
    let slot = ComponentSlot::new(
        linker,
        Some(artifacts),
        capabilities,
        Arc::new(limits),
        EMBEDDED_COMPONENT.to_vec(),
        Provenance::unchecked("embedded"),
        Admission::default(),
    )
    .await?;

    let mut cold = Vec::new();
    for round in 0..COLD_ROUNDS {
        let bytes = variant::variant(EMBEDDED_COMPONENT, &format!("cold-{round}"));
        cold.push(
            slot.replace(bytes, Provenance::unchecked("bench"))
                .await?
                .took,
        );
    }
    let warm = [
        variant::variant(EMBEDDED_COMPONENT, "cold-0"),
        variant::variant(EMBEDDED_COMPONENT, "cold-1"),
    ];
    let mut cached = Vec::new();
    for round in 0..CACHED_ROUNDS {
        let swapped = slot
            .replace(warm[round % 2].clone(), Provenance::unchecked("bench"))
            .await?;
        cached.push(swapped.took);
    }

    println!(
        "swap latency, bytes in hand to new version serving ({} bytes):",
        EMBEDDED_COMPONENT.len()
    );
    let cold = report("cold", cold);
    let cached = report("cached", cached);
    println!(
        "  cold/cached median ratio: {:.0}x",
        cold.as_secs_f64() / cached.as_secs_f64()
    );
    println!("  targets: cached <= 10 ms, cold <= 1 s");
    Ok(())
}
