//! The two keys of cosign's key-based signatures: the public key a
//! signature is checked with (`cosign.pub`, `--verify-key`), and the
//! private key one is made with (`--sign-key`).
//!
//! A private key is a PKCS#8 PEM (`PRIVATE KEY`, what `cosign
//! import-key-pair` takes and `openssl genpkey` writes), a SEC 1 PEM (`EC
//! PRIVATE KEY`), or the encrypted key `cosign generate-key-pair` writes:
//! a PEM block `ENCRYPTED SIGSTORE PRIVATE KEY` (`ENCRYPTED COSIGN PRIVATE
//! KEY` before cosign 2) whose body is JSON naming an scrypt key
//! derivation and a NaCl secretbox around the key's PKCS#8 DER. Signing
//! and checking are aws-lc-rs's; the derivation and the box are the
//! `scrypt` and `crypto_secretbox` crates'.

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, ED25519, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair as _, ParsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use zeroize::Zeroizing;

/// The PEM block names cosign gives its encrypted private keys, today's
/// and the one before cosign 2.
const ENCRYPTED_LABELS: [&str; 2] = [
    "ENCRYPTED SIGSTORE PRIVATE KEY",
    "ENCRYPTED COSIGN PRIVATE KEY",
];

/// The largest scrypt cost accepted (2^20, 1 GiB with r = 8): cosign
/// writes 2^15; a key asking for more is not one cosign made, and would
/// cost the signer its memory.
const MAX_SCRYPT_LOG_N: u8 = 20;

/// The public key components must be signed with (`--verify-key`): ECDSA
/// P-256 (cosign's default) or Ed25519, as a PEM `PUBLIC KEY`.
#[derive(Clone)]
pub struct VerifyKey {
    key: ParsedPublicKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerifyKey(..)")
    }
}

impl VerifyKey {
    /// Reads `cosign.pub` from its PEM text, refusing anything that cannot
    /// check a cosign signature; the reason never quotes the key.
    pub fn from_pem(text: &[u8]) -> Result<Self, String> {
        let block = pem::parse(text).map_err(|err| format!("not a PEM public key: {err}"))?;
        if block.tag() != "PUBLIC KEY" {
            return Err(format!(
                "a PEM `{}` block, where a `PUBLIC KEY` block was wanted",
                block.tag()
            ));
        }
        let der = block.contents();
        ParsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, der)
            .or_else(|_| ParsedPublicKey::new(&ED25519, der))
            .map(|key| VerifyKey { key })
            .map_err(|_| "not an ECDSA P-256 or Ed25519 public key".to_owned())
    }

    /// The key's identity for records: the SHA-256 (hex) of the bytes it
    /// was read from. A version recorded as verified under one key is not
    /// taken as verified under another (`--verify-key` rotated).
    pub fn id(&self) -> String {
        crate::digest::hex_digest(self.key.as_ref())
    }

    /// Whether `signature` (ASN.1 DER for ECDSA, 64 bytes for Ed25519) is
    /// this key's over `message`.
    pub(super) fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        self.key.verify_sig(message, signature).is_ok()
    }
}

/// A private key signatures are made with (`--sign-key`); see the module
/// docs for the formats read.
pub struct SigningKey {
    pair: Pair,
}

enum Pair {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// Reads a private key from its PEM text, decrypting a cosign key
    /// with `password`. The reason for a refusal never quotes the key or
    /// the password.
    pub fn from_pem(text: &[u8], password: Option<&[u8]>) -> Result<Self, String> {
        let block = pem::parse(text).map_err(|err| format!("not a PEM private key: {err}"))?;
        let contents = Zeroizing::new(block.contents().to_vec());
        let pair = match block.tag() {
            "PRIVATE KEY" => Pair::from_pkcs8(&contents)?,
            "EC PRIVATE KEY" => {
                EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_ASN1_SIGNING, &contents)
                    .map(Pair::Ecdsa)
                    .map_err(|_| "not an ECDSA P-256 private key".to_owned())?
            }
            label if ENCRYPTED_LABELS.contains(&label) => {
                let password = password.ok_or(
                    "an encrypted cosign key, and no password was given (COSIGN_PASSWORD)",
                )?;
                Pair::from_pkcs8(&decrypt(&contents, password)?)?
            }
            other => {
                return Err(format!(
                    "a PEM `{other}` block, where `PRIVATE KEY`, `EC PRIVATE KEY` or \
                     `{}` was wanted",
                    ENCRYPTED_LABELS[0]
                ));
            }
        };
        Ok(SigningKey { pair })
    }

    /// This key's signature over `message`: ASN.1 DER for ECDSA, as cosign
    /// writes it, or Ed25519's 64 bytes.
    pub(super) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let signature = match &self.pair {
            Pair::Ecdsa(pair) => pair
                .sign(&aws_lc_rs::rand::SystemRandom::new(), message)
                .map_err(|_| "the signature could not be made".to_owned())?,
            Pair::Ed25519(pair) => pair.sign(message),
        };
        Ok(signature.as_ref().to_vec())
    }

    /// The public half as DER (SubjectPublicKeyInfo), as `cosign.pub`
    /// holds it: what a bundle's key hint is computed over.
    pub(super) fn public_der(&self) -> Vec<u8> {
        use aws_lc_rs::encoding::AsDer as _;
        let der = match &self.pair {
            Pair::Ecdsa(pair) => pair.public_key().as_der().map(|der| der.as_ref().to_vec()),
            Pair::Ed25519(pair) => pair.public_key().as_der().map(|der| der.as_ref().to_vec()),
        };
        der.unwrap_or_default()
    }

    /// The public half, to tell this key's earlier signatures from others'.
    pub(super) fn verify_key(&self) -> VerifyKey {
        let (algorithm, public): (&'static dyn aws_lc_rs::signature::VerificationAlgorithm, _) =
            match &self.pair {
                Pair::Ecdsa(pair) => (&ECDSA_P256_SHA256_ASN1, pair.public_key().as_ref()),
                Pair::Ed25519(pair) => (&ED25519, pair.public_key().as_ref()),
            };
        VerifyKey {
            key: ParsedPublicKey::new(algorithm, public)
                .expect("a key pair's own public key parses"),
        }
    }
}

impl Pair {
    fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der)
            .map(Pair::Ecdsa)
            .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map(Pair::Ed25519))
            .map_err(|_| "not an ECDSA P-256 or Ed25519 private key".to_owned())
    }
}

/// An encrypted cosign key's body (go-securesystemslib's `encrypted`
/// format). Byte fields are standard base64, as Go writes `[]byte`.
#[derive(serde::Deserialize)]
struct Encrypted {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(serde::Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    salt: String,
}

#[derive(serde::Deserialize)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(serde::Deserialize)]
struct Cipher {
    name: String,
    nonce: String,
}

/// The PKCS#8 DER inside an encrypted cosign key.
fn decrypt(body: &[u8], password: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    use crypto_secretbox::aead::{Aead as _, KeyInit as _};
    let malformed = |what: &str| format!("an encrypted cosign key with {what}");
    let encrypted: Encrypted =
        serde_json::from_slice(body).map_err(|_| malformed("a body that is not its JSON"))?;
    if encrypted.kdf.name != "scrypt" || encrypted.cipher.name != "nacl/secretbox" {
        return Err(malformed(
            "a key derivation or cipher other than scrypt and nacl/secretbox",
        ));
    }
    let ScryptParams { n, r, p } = encrypted.kdf.params;
    let log_n = match u8::try_from(n.trailing_zeros()) {
        Ok(log_n) if n.is_power_of_two() && log_n <= MAX_SCRYPT_LOG_N => log_n,
        _ => return Err(malformed("scrypt parameters out of bounds")),
    };
    let params = scrypt::Params::new(log_n, r, p, 32)
        .map_err(|_| malformed("scrypt parameters out of bounds"))?;
    let decode = |field: &str| {
        BASE64
            .decode(field)
            .map_err(|_| malformed("a field that is not base64"))
    };
    let salt = decode(&encrypted.kdf.salt)?;
    let nonce = decode(&encrypted.cipher.nonce)?;
    let ciphertext = decode(&encrypted.ciphertext)?;
    let nonce: [u8; 24] = nonce
        .try_into()
        .map_err(|_| malformed("a nonce that is not 24 bytes"))?;
    let mut key = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(password, &salt, &params, key.as_mut())
        .map_err(|_| malformed("scrypt parameters out of bounds"))?;
    let secretbox = crypto_secretbox::XSalsa20Poly1305::new(&(*key).into());
    secretbox
        .decrypt(&nonce.into(), ciphertext.as_slice())
        .map(Zeroizing::new)
        .map_err(|_| "the password does not open this cosign key".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer as _;

    fn p256_pkcs8() -> Vec<u8> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    fn pem(label: &str, der: &[u8]) -> Vec<u8> {
        pem::encode(&pem::Pem::new(label, der.to_vec())).into_bytes()
    }

    /// An encrypted key as `cosign generate-key-pair` writes one, made here
    /// from the published format with cosign's own parameters.
    fn cosign_encrypted(pkcs8: &[u8], password: &[u8]) -> Vec<u8> {
        use crypto_secretbox::aead::{Aead as _, KeyInit as _};
        let salt = [7u8; 32];
        let nonce = [9u8; 24];
        let mut key = [0u8; 32];
        scrypt::scrypt(
            password,
            &salt,
            &scrypt::Params::new(15, 8, 1, 32).unwrap(),
            &mut key,
        )
        .unwrap();
        let ciphertext = crypto_secretbox::XSalsa20Poly1305::new(&key.into())
            .encrypt(&nonce.into(), pkcs8)
            .unwrap();
        let body = serde_json::json!({
            "kdf": {"name": "scrypt", "params": {"N": 32768, "r": 8, "p": 1}, "salt": BASE64.encode(salt)},
            "cipher": {"name": "nacl/secretbox", "nonce": BASE64.encode(nonce)},
            "ciphertext": BASE64.encode(ciphertext),
        });
        pem(
            "ENCRYPTED SIGSTORE PRIVATE KEY",
            body.to_string().as_bytes(),
        )
    }

    fn public_pem(pkcs8: &[u8]) -> Vec<u8> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8).unwrap();
        pem("PUBLIC KEY", pair.public_key().as_der().unwrap().as_ref())
    }

    #[test]
    fn a_signature_checks_with_its_own_public_key_only() {
        let ours = p256_pkcs8();
        let signer = SigningKey::from_pem(&pem("PRIVATE KEY", &ours), None).unwrap();
        let verify = VerifyKey::from_pem(&public_pem(&ours)).unwrap();
        let theirs = VerifyKey::from_pem(&public_pem(&p256_pkcs8())).unwrap();
        let signature = signer.sign(b"payload").unwrap();
        assert!(verify.verifies(b"payload", &signature));
        assert!(signer.verify_key().verifies(b"payload", &signature));
        assert!(!verify.verifies(b"payloaD", &signature));
        assert!(!theirs.verifies(b"payload", &signature));
    }

    #[test]
    fn an_ed25519_key_signs_and_checks() {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let signer = SigningKey::from_pem(&pem("PRIVATE KEY", pkcs8.as_ref()), None).unwrap();
        let public = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .unwrap()
            .public_key()
            .as_der()
            .unwrap();
        let verify = VerifyKey::from_pem(&pem("PUBLIC KEY", public.as_ref())).unwrap();
        assert!(verify.verifies(b"m", &signer.sign(b"m").unwrap()));
    }

    #[test]
    fn an_encrypted_cosign_key_opens_with_its_password_only() {
        let pkcs8 = p256_pkcs8();
        let encrypted = cosign_encrypted(&pkcs8, b"hunter2");
        let signer = SigningKey::from_pem(&encrypted, Some(b"hunter2")).unwrap();
        let verify = VerifyKey::from_pem(&public_pem(&pkcs8)).unwrap();
        assert!(verify.verifies(b"m", &signer.sign(b"m").unwrap()));

        let wrong = SigningKey::from_pem(&encrypted, Some(b"hunter3")).unwrap_err();
        assert!(wrong.contains("password does not open"), "{wrong}");
        let none = SigningKey::from_pem(&encrypted, None).unwrap_err();
        assert!(none.contains("COSIGN_PASSWORD"), "{none}");
    }

    #[test]
    fn refusals_name_the_block_wanted_and_never_the_key() {
        let pkcs8 = p256_pkcs8();
        let err = VerifyKey::from_pem(&pem("PRIVATE KEY", &pkcs8)).unwrap_err();
        assert!(err.contains("`PUBLIC KEY` block was wanted"), "{err}");
        let err = SigningKey::from_pem(&public_pem(&pkcs8), None).unwrap_err();
        assert!(err.contains("`PRIVATE KEY`"), "{err}");
        let err = VerifyKey::from_pem(&pem("PUBLIC KEY", b"garbage")).unwrap_err();
        assert_eq!(err, "not an ECDSA P-256 or Ed25519 public key");
        assert!(VerifyKey::from_pem(b"not pem").is_err());
    }
}
