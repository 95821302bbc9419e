//! What every component is compiled and linked against: one [`Engine`]
//! (pooling allocator, epoch interruption and its ticker) and one
//! [`Linker`] holding WASI, `wasi:http` and the keybust capabilities.

use super::store::RequestState;
use crate::capabilities;
use crate::limits::{EPOCH_TICK, Limits, MAX_INSTANCES};
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How much of a freed stack slot stays resident for the next request.
/// The memset touches all of it, so it is what a request touches (16 KiB
/// on the full path), no more.
const STACK_KEEP_RESIDENT: usize = 16 << 10;

/// wasmtime could not be set up on this machine.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up wasmtime: {0}")]
pub struct EngineError(#[source] wasmtime::Error);

/// Builds the engine every component shares: the pooling allocator when the
/// machine can reserve its address space, on-demand allocation otherwise;
/// epoch interruption on, with one ticker thread for the engine.
pub fn new_engine(limits: &Limits) -> Result<Engine, EngineError> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_component_instances(MAX_INSTANCES)
        .total_core_instances(MAX_INSTANCES * 4)
        .total_memories(MAX_INSTANCES)
        .total_tables(MAX_INSTANCES * 2)
        .total_stacks(MAX_INSTANCES)
        .max_memory_size(limits.max_instance_memory);
    // Keep the first pages of a freed slot resident and reset them in place
    // instead of handing them back to the kernel. The guest's initial memory
    // is just over 1 MiB; measured on this workload (preflight, one core),
    // 2 MiB gave about 1.5x the throughput of the defaults, 1 MiB about 1.35x.
    pooling
        .linear_memory_keep_resident(2 << 20)
        .table_keep_resident(1 << 16)
        .pagemap_scan(wasmtime::Enabled::Auto);
    // A freed stack slot is zeroed: its top STACK_KEEP_RESIDENT bytes with
    // memset, kept resident for the next request, the rest handed back to
    // the kernel. Without this a
    // slot keeps every page its deepest guest ever touched, up to the wasm
    // stack's 512 KiB, in each of the slots ever used. Measured on this
    // workload: no change in throughput.
    config.async_stack_zeroing(true);
    pooling.async_stack_keep_resident(STACK_KEEP_RESIDENT);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    let engine = match Engine::new(&config) {
        Ok(engine) => engine,
        Err(err) => {
            tracing::warn!(
                error = %err,
                "pooling allocator unavailable (virtual memory short?); using on-demand allocation"
            );
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            Engine::new(&config).map_err(EngineError)?
        }
    };
    start_epoch_ticker(&engine);
    Ok(engine)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is
/// dropped. The ticker holds only a weak reference, so it never keeps an
/// engine alive; each store counts the ticks that find its guest running
/// (see [`crate::runtime::store::bound_store`]). An engine of your own needs
/// `Config::epoch_interruption(true)` and this, once.
pub fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("keybust-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
    if let Err(err) = spawned {
        tracing::error!(error = %err, "cannot start the epoch ticker: guests have no CPU deadline");
    }
}

/// Builds the linker every component is checked against: WASI 0.2 and
/// 0.3 (keybust's guest needs only stderr of either, but a std-built
/// component imports the rest of `wasi:cli`), `wasi:http` 0.2 and 0.3, and
/// ours. Both generations of WASI are in one linker so that one slot can
/// serve, and swap between, components of either.
pub fn new_linker(engine: &Engine) -> Result<Linker<RequestState>, EngineError> {
    let mut linker = Linker::new(engine);
    let link = |linker: &mut Linker<RequestState>| -> wasmtime::Result<()> {
        wasmtime_wasi::p2::add_to_linker_async(linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
        wasmtime_wasi::p3::add_to_linker(linker)?;
        wasmtime_wasi_http::p3::add_to_linker(linker)?;
        capabilities::add_to_linker(linker)
    };
    link(&mut linker).map_err(|err| EngineError(err.context("cannot link the host's imports")))?;
    Ok(linker)
}
