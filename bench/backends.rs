//! The benchmark's stand-ins for Convex and the token issuer: the same
//! loopback servers `keybust dev` uses, with their settings printed as
//! `NAME=value` lines for `bench/run.sh`. Runs until killed.
//!
//! Run: `cargo run --release -p keybust-host --example bench-backends`

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let env = keybust::dev::start().await?;
    let convex = &env.settings.convex;
    let secret = convex
        .shared_secret
        .as_ref()
        .map(|secret| secret.expose().to_owned())
        .unwrap_or_default();
    println!(
        "CONVEX_SITE_URL={}",
        convex.site_url.clone().unwrap_or_default()
    );
    println!("CONVEX_SERVER_SHARED_SECRET={secret}");
    println!(
        "CLERK_JWT_ISSUER_DOMAIN={}",
        env.settings.session.issuer.clone().unwrap_or_default()
    );
    println!("BENCH_TOKEN={}", env.token);
    println!("BENCH_KEY_HASH={}", env.key_hash);
    println!("READY=1");
    std::future::pending::<()>().await;
    Ok(())
}
