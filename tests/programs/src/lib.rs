//! One component that fits the `keybust:gateway/endpoint` world and
//! misbehaves on request, so the host's tests can show it survives every
//! kind of bad build. The query string picks the behaviour:
//!
//! | `?mode=` | what the guest does |
//! |---|---|
//! | `ok` (or none) | answers 200 `{"ok":true}` |
//! | `count` | answers 200 `{"served":N}`: the requests this instance has served |
//! | `say` | writes one line to stderr, then answers 200 |
//! | `chatter` | writes about 50 KiB to stderr, then answers 200 |
//! | `trap` | traps at once |
//! | `loop` | loops forever |
//! | `deep` | recurses `&depth=N` calls deep (each frame keeps values in the host's native stack), then asks Convex who owns `&key=HASH` there, and answers 200 |
//! | `alloc` | allocates past any reasonable memory cap |
//! | `alloc32` | allocates 32 MiB, then answers 200 |
//! | `huge` | streams a 64 MiB response body |
//! | `imports` | calls a host import in a tight loop, forever |
//! | `snoop` | reports what it can see of the host: env, args, files, sockets, outbound HTTP (to `127.0.0.1:PORT` with `&port=PORT`) |
//! | `fields` | grows one `wasi:http` fields resource until the host refuses |
//! | `policy`, `policy-*` | the endpoint's own policy, with one flaw each (`policy.rs`) |
//!
//! A request without `?mode=` gets the mode written into the component's
//! `DEFAULT_MODE` marker: `ok` as built, another in the copies the tests
//! make (`support::programs::with_default_mode`).
//!
//! With the `p3` feature it is a wasi:http 0.3 component instead
//! (`keybust:gateway/endpoint-p3`) with `ok`, `count`, `say`, `trap`,
//! `loop`, `alloc`, `huge` and `imports`.

// The endpoint's policy (included by `policy.rs`) names `alloc`.
extern crate alloc;

#[cfg(all(target_arch = "wasm32", not(feature = "p3")))]
mod component;
#[cfg(all(target_arch = "wasm32", feature = "p3"))]
mod component_p3;
#[cfg(all(target_arch = "wasm32", not(feature = "p3")))]
mod policy;

/// Spins in wasm code until the host stops it.
#[cfg(target_arch = "wasm32")]
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Recurses `depth` calls deep and calls `bottom` there. Each frame keeps eight values live across its call, which
/// wasm code keeps in the native stack (the host's fiber stack), not in
/// linear memory; they come from an atomic the compiler cannot see
/// through, so it cannot fold or recompute them after the call.
#[cfg(all(target_arch = "wasm32", not(feature = "p3")))]
fn deep(depth: u32, bottom: &dyn Fn() -> u64) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEED: AtomicU64 = AtomicU64::new(1);
    let held: [u64; 8] =
        std::array::from_fn(|_| SEED.fetch_add(u64::from(depth), Ordering::Relaxed));
    let below = if depth == 0 {
        bottom()
    } else {
        deep(depth - 1, bottom)
    };
    held.iter()
        .fold(below, |sum, value| sum.rotate_left(3) ^ value)
}

/// Allocates a MiB at a time until the memory cap traps it.
#[cfg(target_arch = "wasm32")]
fn hoard() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

/// Calls a host import (`ask`) in a tight loop until the host stops it.
#[cfg(target_arch = "wasm32")]
fn ask_forever<T>(ask: impl Fn() -> T) -> ! {
    loop {
        std::hint::black_box(ask());
    }
}
