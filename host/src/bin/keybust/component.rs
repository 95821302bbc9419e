//! `keybust component push` and `keybust component check`: the rollout's
//! two steps before a fleet follows a tag.

use anyhow::Context;
use clap::Subcommand;
use keybust::capabilities::{Capabilities, Settings};
use keybust::config::Secret;
use keybust::contract::{self, ContractGate};
use keybust::digest;
use keybust::limits::MAX_COMPONENT_BYTES;
use keybust::limits::{LimitArgs, Limits};
use keybust::rollout::registry::{OciReference, RegistryArgs, SigningKey};
use keybust::rollout::source::ComponentSource;
use keybust::runtime::engine;
use keybust::runtime::{Plugin, WasiHttp};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Subcommand)]
pub enum ComponentCommand {
    /// Check a component (it must pass `check`) and publish it at an
    /// oci:// tag, in the wasm artifact layout `wkg oci push` writes; print
    /// the manifest digest to pin and the component's digest.
    Push(Box<PushArgs>),
    /// Run exactly the checks a swap runs (compile, world check, one
    /// instantiation, the contract gate), serving nothing: exit 0 when the
    /// component would be accepted, 1 with the reason (the contract row it
    /// fails) when not.
    Check(Box<CheckArgs>),
    /// Sign the version an oci:// tag points to now, as `cosign sign --key`
    /// does, for one published unsigned; print the manifest digest signed.
    Sign(Box<SignArgs>),
}

#[derive(clap::Args)]
pub struct SignArgs {
    /// The version to sign: oci://REGISTRY/REPOSITORY:TAG (or @sha256:DIGEST).
    reference: String,

    /// Private key to sign with (PKCS#8 PEM, or a cosign key; ECDSA P-256
    /// or Ed25519).
    #[arg(long, env = "KEYBUST_SIGN_KEY")]
    sign_key: PathBuf,

    /// Password of an encrypted --sign-key.
    #[arg(long, env = "COSIGN_PASSWORD", hide_env_values = true)]
    sign_key_password: Option<String>,

    #[command(flatten, next_help_heading = "Registry")]
    registry: RegistryArgs,
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// The component file.
    file: PathBuf,

    /// Where to publish it: oci://REGISTRY/REPOSITORY:TAG.
    reference: String,

    /// Private key to sign the published manifest digest with, as `cosign
    /// sign --key` does (PKCS#8 PEM, or a cosign key; ECDSA P-256 or
    /// Ed25519) [default: unsigned].
    #[arg(long, env = "KEYBUST_SIGN_KEY")]
    sign_key: Option<PathBuf>,

    /// Password of an encrypted --sign-key.
    #[arg(long, env = "COSIGN_PASSWORD", hide_env_values = true)]
    sign_key_password: Option<String>,

    #[command(flatten, next_help_heading = "Registry")]
    registry: RegistryArgs,

    /// Whether the contract gate runs, as it does on the serving instances.
    #[arg(long, env = "KEYBUST_CONTRACT_GATE", value_enum, default_value_t = ContractGate::On)]
    contract_gate: ContractGate,

    #[command(
        flatten,
        next_help_heading = "Limits (as the serving instances have them)"
    )]
    limits: LimitArgs,
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// A component file, or oci://REGISTRY/REPOSITORY:TAG (or @sha256:DIGEST).
    component: String,

    #[command(flatten, next_help_heading = "Registry")]
    registry: RegistryArgs,

    /// Whether the contract gate runs, as it does on the serving instances.
    #[arg(long, env = "KEYBUST_CONTRACT_GATE", value_enum, default_value_t = ContractGate::On)]
    contract_gate: ContractGate,

    #[command(
        flatten,
        next_help_heading = "Limits (as the serving instances have them)"
    )]
    limits: LimitArgs,
}

pub async fn run(command: ComponentCommand) -> anyhow::Result<ExitCode> {
    match command {
        ComponentCommand::Check(args) => {
            let bytes = match ComponentSource::parse(Some(&args.component))? {
                ComponentSource::Oci(reference) => {
                    let registry = args.registry.registry()?.with_login_for(&reference);
                    registry.pull(&reference, None).await?.bytes
                }
                _ => read(Path::new(&args.component))?,
            };
            Ok(
                match check(bytes, args.limits.limits()?, args.contract_gate).await {
                    Ok((digest, kind, gate)) => {
                        let behaves = match gate {
                            Some(passed) => format!(
                                ", and passes the contract gate ({} rows in {} ms)",
                                passed.rows,
                                passed.took.as_millis()
                            ),
                            None => ", the contract gate not run (--contract-gate off)".to_owned(),
                        };
                        println!(
                            "ok: sha256:{digest} fits {} (wasi:http {}), instantiates{behaves}",
                            kind.world(),
                            kind.as_str()
                        );
                        ExitCode::SUCCESS
                    }
                    Err(reason) => {
                        eprintln!("refused: {reason}");
                        ExitCode::FAILURE
                    }
                },
            )
        }
        ComponentCommand::Sign(args) => {
            let reference = OciReference::parse(&args.reference)?;
            let registry = args.registry.registry()?.with_login_for(&reference);
            let password = args.sign_key_password.map(Secret::new);
            let key = SigningKey::load(&args.sign_key, password.as_ref())?;
            let digest = registry.sign(&reference, &key).await?;
            println!("signed {reference}\nmanifest {digest}");
            Ok(ExitCode::SUCCESS)
        }
        ComponentCommand::Push(args) => {
            let reference = OciReference::parse(&args.reference)?;
            if reference.tag().is_none() {
                anyhow::bail!("{reference}: push to a tag (oci://REGISTRY/REPOSITORY:TAG)");
            }
            let bytes = read(&args.file)?;
            // The key is read before anything is uploaded: a wrong path or
            // password must not leave an unsigned version at the tag.
            let password = args.sign_key_password.map(Secret::new);
            let sign_key = args
                .sign_key
                .as_deref()
                .map(|key| SigningKey::load(key, password.as_ref()))
                .transpose()?;
            if let Err(reason) =
                check(bytes.clone(), args.limits.limits()?, args.contract_gate).await
            {
                eprintln!("refused: {reason}");
                return Ok(ExitCode::FAILURE);
            }
            let registry = args.registry.registry()?.with_login_for(&reference);
            let pushed = registry.push(&reference, bytes, sign_key.as_ref()).await?;
            println!(
                "pushed {reference}{}\nmanifest {}\ncomponent sha256:{}\npin it as oci://{}/{}@{}",
                if sign_key.is_some() { " (signed)" } else { "" },
                pushed.manifest_digest,
                pushed.component_digest,
                reference.registry(),
                reference.oci().repository(),
                pushed.manifest_digest
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read component {}", path.display()))?;
    if bytes.len() > MAX_COMPONENT_BYTES {
        anyhow::bail!(
            "{} is larger than {MAX_COMPONENT_BYTES} bytes",
            path.display()
        );
    }
    Ok(bytes)
}

/// The checks a swap makes, under `limits` (the instance memory bound
/// among them), with unconfigured capabilities (instantiation calls none of
/// them, and the contract gate answers in their place): its digest and
/// what the gate found when they pass, the reason when not.
async fn check(
    bytes: Vec<u8>,
    limits: Limits,
    gate: ContractGate,
) -> Result<(String, WasiHttp, Option<contract::Passed>), String> {
    let limits = Arc::new(limits);
    let engine = engine::new_engine(&limits).map_err(|err| err.to_string())?;
    let linker = engine::new_linker(&engine).map_err(|err| err.to_string())?;
    let capabilities =
        Arc::new(Capabilities::from_settings(&Settings::default()).map_err(|err| err.to_string())?);
    let digest = digest::hex_digest(&bytes);
    let (plugin, _) = tokio::task::spawn_blocking(move || {
        Plugin::load(&linker, None, &bytes, capabilities, limits)
    })
    .await
    .map_err(|err| err.to_string())?
    .map_err(|err| err.to_string())?;
    plugin.probe().await.map_err(|err| err.to_string())?;
    let passed = if gate.is_on() {
        Some(
            contract::check(&plugin)
                .await
                .map_err(|refusal| format!("refused at the contract gate: {refusal}"))?,
        )
    } else {
        None
    };
    Ok((digest, plugin.wasi_http(), passed))
}
