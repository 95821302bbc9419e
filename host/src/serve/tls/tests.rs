use super::{Certificates, Listener, TlsError, TlsFiles};
use rcgen::{CertifiedKey, generate_simple_self_signed};
use std::path::Path;

fn pair() -> CertifiedKey<rcgen::KeyPair> {
    generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap()
}

fn install(dir: &Path, pair: &CertifiedKey<rcgen::KeyPair>) -> TlsFiles {
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        client_ca: None,
    };
    std::fs::write(&files.cert, pair.cert.pem()).unwrap();
    std::fs::write(&files.key, pair.signing_key.serialize_pem()).unwrap();
    files
}

fn fingerprint(certificates: &Certificates) -> String {
    certificates.current.load().fingerprint.clone()
}

#[test]
fn a_reload_swaps_only_a_good_new_pair() {
    let dir = tempfile::tempdir().unwrap();
    let first = pair();
    let files = install(dir.path(), &first);
    let certificates = Certificates::load(files.clone(), &[Listener::Public]).unwrap();
    let loaded = fingerprint(&certificates);
    assert!(
        !certificates.reload().unwrap(),
        "unchanged files are no change"
    );

    // A key from another pair: refused, the first pair stays.
    std::fs::write(&files.key, pair().signing_key.serialize_pem()).unwrap();
    let err = certificates.reload().unwrap_err();
    assert!(matches!(err, TlsError::Pair { .. }), "{err}");
    assert_eq!(fingerprint(&certificates), loaded);
    // A truncated certificate: refused as well.
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nMII").unwrap();
    assert!(matches!(certificates.reload(), Err(TlsError::Pem { .. })));
    assert_eq!(fingerprint(&certificates), loaded);

    let second = pair();
    install(dir.path(), &second);
    assert!(certificates.reload().unwrap());
    assert_ne!(fingerprint(&certificates), loaded);
    assert_eq!(
        fingerprint(&certificates),
        crate::digest::hex_digest(second.cert.der())
    );
}

#[test]
fn only_the_chosen_listeners_speak_tls() {
    let dir = tempfile::tempdir().unwrap();
    let files = install(dir.path(), &pair());
    let certificates = std::sync::Arc::new(
        Certificates::load(files, &[Listener::Public, Listener::Metrics]).unwrap(),
    );
    assert!(certificates.acceptor(Listener::Public).is_some());
    assert!(certificates.acceptor(Listener::Metrics).is_some());
    assert!(certificates.acceptor(Listener::Admin).is_none());
}

#[test]
fn client_certificates_need_a_tls_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = install(dir.path(), &pair());
    files.client_ca = Some(files.cert.clone());
    let refused = Certificates::load(files.clone(), &[Listener::Public]).unwrap_err();
    assert!(matches!(refused, TlsError::ClientCaWithoutAdminTls));
    Certificates::load(files.clone(), &[Listener::Admin]).unwrap();
    // A client CA file without a certificate in it is named.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    files.client_ca = Some(empty);
    let err = Certificates::load(files, &[Listener::Admin]).unwrap_err();
    assert!(err.to_string().contains("empty.pem"), "{err}");
}
