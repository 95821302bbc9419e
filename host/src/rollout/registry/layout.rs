//! The wasm artifact layout in an OCI registry, as `wkg oci push` and
//! `wash push` write it and as keybust pulls and pushes it: an OCI image
//! manifest with one `application/wasm` layer holding the component, and a
//! small JSON config (`application/vnd.wasm.config.v0+json`) that names the
//! layer and the component's imports and exports, so a registry browser or
//! a policy engine can tell what it holds without compiling it.
//!
//! The config's names are read from the component's own import and export
//! sections with wasmparser, which wasmtime already links: no WIT decoding
//! is needed for a list of names.

use oci_client::client::{Config, ImageLayer};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
use std::time::SystemTime;

/// The config's media type: what tells a wasm artifact from a container
/// image.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";

/// The one layer's media type: the component's bytes, as they are.
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";

/// Bytes that cannot be published as a component.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// They are not a WebAssembly binary at all.
    #[error("not WebAssembly: {0}")]
    Parse(#[source] wasmparser::BinaryReaderError),
    /// They are a core module, not a component.
    #[error("a core WebAssembly module, not a component")]
    Module,
    /// The manifest written for them does not serialize.
    #[error("the manifest cannot be written: {0}")]
    Manifest(#[source] serde_json::Error),
}

/// A component's manifest, config and layer, ready to push.
pub struct Artifact {
    /// The image manifest's bytes, as keybust wrote them (its media type
    /// set, as registries expect). These exact bytes are pushed, and their
    /// digest is the one signed and reported: never a digest the registry
    /// names back.
    pub manifest: Vec<u8>,
    /// `sha256:<hex>` of [`Artifact::manifest`].
    pub manifest_digest: String,
    /// The wasm config.
    pub config: Config,
    /// The component's bytes.
    pub layers: Vec<ImageLayer>,
}

/// The artifact for `bytes`, a component, created now.
pub fn artifact(bytes: Vec<u8>) -> Result<Artifact, LayoutError> {
    let names = Names::of(&bytes)?;
    let digest = format!("sha256:{}", crate::digest::hex_digest(&bytes));
    let config = serde_json::json!({
        "created": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [digest],
        "component": {
            "exports": names.exports,
            "imports": names.imports,
            "target": null,
        },
    });
    let config = Config::new(
        config.to_string().into_bytes(),
        CONFIG_MEDIA_TYPE.to_owned(),
        None,
    );
    let layers = vec![ImageLayer::new(bytes, LAYER_MEDIA_TYPE.to_owned(), None)];
    let mut manifest = OciImageManifest::build(&layers, &config, None);
    manifest.media_type = Some(OCI_IMAGE_MEDIA_TYPE.to_owned());
    let manifest = serde_json::to_vec(&manifest).map_err(LayoutError::Manifest)?;
    Ok(Artifact {
        manifest_digest: format!("sha256:{}", crate::digest::hex_digest(&manifest)),
        manifest,
        config,
        layers,
    })
}

/// The one component layer of the image manifest `raw`, or why `raw` is
/// not a component in the wasm artifact layout.
pub fn component_layer(raw: &[u8]) -> Result<OciDescriptor, String> {
    let manifest: OciImageManifest =
        serde_json::from_slice(raw).map_err(|err| format!("not an image manifest: {err}"))?;
    if manifest.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(format!(
            "its config is {}, not {CONFIG_MEDIA_TYPE}",
            manifest.config.media_type
        ));
    }
    let mut layers = manifest.layers;
    if layers.len() != 1 {
        return Err(format!("{} layers, not one", layers.len()));
    }
    let layer = layers.remove(0);
    if layer.media_type != LAYER_MEDIA_TYPE {
        return Err(format!(
            "its layer is {}, not {LAYER_MEDIA_TYPE}",
            layer.media_type
        ));
    }
    // A layer's `urls` would send the pull to any server the manifest
    // names, plain http:// included, past the registry rules; the wasm
    // artifact layout never uses them.
    if layer.urls.as_ref().is_some_and(|urls| !urls.is_empty()) {
        return Err("its layer names urls to fetch it from elsewhere".to_owned());
    }
    Ok(layer)
}

/// What a component imports and exports, by name (`wasi:http/types@0.2.12`,
/// `keybust:gateway/convex@0.1.0`), in the order its sections give them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Names {
    imports: Vec<String>,
    exports: Vec<String>,
}

impl Names {
    /// The outer component's names; those of components and modules nested
    /// in it are its own business.
    fn of(bytes: &[u8]) -> Result<Self, LayoutError> {
        use wasmparser::{Encoding, Parser, Payload};
        let mut names = Names::default();
        // 0 while in the outer component; one more inside each nested
        // module or component, until its `End`.
        let mut depth = 0usize;
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.map_err(LayoutError::Parse)? {
                Payload::Version { encoding, .. }
                    if depth == 0 && encoding != Encoding::Component =>
                {
                    return Err(LayoutError::Module);
                }
                Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
                Payload::End(_) => depth = depth.saturating_sub(1),
                Payload::ComponentImportSection(section) if depth == 0 => {
                    for import in section {
                        let import = import.map_err(LayoutError::Parse)?;
                        names.imports.push(import.name.name.to_owned());
                    }
                }
                Payload::ComponentExportSection(section) if depth == 0 => {
                    for export in section {
                        let export = export.map_err(LayoutError::Parse)?;
                        names.exports.push(export.name.name.to_owned());
                    }
                }
                _ => {}
            }
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_or_garbage_is_not_a_component() {
        assert!(matches!(
            Names::of(b"\0asm\x01\0\0\0"),
            Err(LayoutError::Module)
        ));
        assert!(matches!(Names::of(b"nope"), Err(LayoutError::Parse(_))));
    }

    #[test]
    fn a_layer_to_fetch_from_elsewhere_is_refused() {
        let manifest = |urls: &str| {
            format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
                "config":{{"mediaType":"{CONFIG_MEDIA_TYPE}","digest":"sha256:{zero}","size":2}},
                "layers":[{{"mediaType":"{LAYER_MEDIA_TYPE}","digest":"sha256:{zero}","size":8{urls}}}]}}"#,
                zero = "0".repeat(64)
            )
        };
        assert!(component_layer(manifest("").as_bytes()).is_ok());
        let err = component_layer(manifest(r#","urls":["http://198.51.100.7/x"]"#).as_bytes())
            .unwrap_err();
        assert!(err.contains("urls"), "{err}");
    }

    #[test]
    fn an_empty_component_names_nothing() {
        assert_eq!(Names::of(b"\0asm\x0d\0\x01\0").unwrap(), Names::default());
    }
}
