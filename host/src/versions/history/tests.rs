use super::*;

/// `v1` serves from the configured source `embedded`, then `v2` is swapped
/// in through the admin API, with `v1` as its rollback target.
fn swap_v1_for_v2(history: &History) {
    history
        .record(
            "embedded",
            accepted(b"v1", "embedded"),
            Some(b"v1"),
            None,
            true,
        )
        .unwrap();
    history
        .record(
            "embedded",
            accepted(b"v2", "admin"),
            Some(b"v2"),
            Some(accepted(b"v1", "embedded")),
            true,
        )
        .unwrap();
}

fn accepted(bytes: &[u8], source: &str) -> Accepted {
    Accepted::now(&hex_digest(bytes), source)
}

#[test]
fn a_swap_survives_a_restart_with_its_rollback_target() {
    let dir = tempfile::tempdir().unwrap();
    let history = History::open(dir.path()).unwrap();
    assert!(
        history
            .restore("embedded", Some(&hex_digest(b"v1")), false)
            .is_none()
    );
    swap_v1_for_v2(&history);

    drop(history);
    let reopened = History::open(dir.path()).unwrap();
    let start = reopened
        .restore("embedded", Some(&hex_digest(b"v1")), false)
        .expect("the swap stands");
    assert_eq!(start.current.bytes, b"v2");
    assert_eq!(start.current.source, "admin");
    assert_eq!(start.previous.expect("kept").bytes, b"v1");
}

#[test]
fn the_configured_source_wins_when_it_changed() {
    let dir = tempfile::tempdir().unwrap();
    let history = History::open(dir.path()).unwrap();
    history
        .record("/a.wasm", accepted(b"a", "/a.wasm"), Some(b"a"), None, true)
        .unwrap();
    history
        .record(
            "/a.wasm",
            accepted(b"x", "admin"),
            Some(b"x"),
            Some(accepted(b"a", "/a.wasm")),
            true,
        )
        .unwrap();
    drop(history);
    let reopened = History::open(dir.path()).unwrap();
    // Another --component value.
    assert!(
        reopened
            .restore("/b.wasm", Some(&hex_digest(b"b")), false)
            .is_none()
    );
    // The same value, holding something new.
    assert!(
        reopened
            .restore("/a.wasm", Some(&hex_digest(b"a2")), false)
            .is_none()
    );
    // The same value, unchanged: the admin swap stands.
    let start = reopened
        .restore("/a.wasm", Some(&hex_digest(b"a")), false)
        .expect("kept");
    assert_eq!(start.current.bytes, b"x");
}

#[test]
fn a_source_that_cannot_be_read_serves_the_record_made_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let history = History::open(dir.path()).unwrap();
    let tag = "oci://127.0.0.1:5000/k:stable";
    history
        .record(tag, accepted(b"v1", tag), Some(b"v1"), None, true)
        .unwrap();
    drop(history);
    let reopened = History::open(dir.path()).unwrap();
    let start = reopened
        .restore(tag, None, false)
        .expect("the record serves");
    assert_eq!(start.current.bytes, b"v1");
    assert!(
        reopened
            .restore("oci://127.0.0.1:5000/k:other", None, false)
            .is_none()
    );
}

#[test]
fn with_signatures_required_unchecked_versions_are_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let history = History::open(dir.path()).unwrap();
    let tag = "oci://127.0.0.1:5000/k:stable";
    history
        .record(
            tag,
            accepted(b"v1", tag).signed(true),
            Some(b"v1"),
            None,
            true,
        )
        .unwrap();
    history
        .record(
            tag,
            accepted(b"v2", "admin"),
            Some(b"v2"),
            Some(accepted(b"v1", tag).signed(true)),
            true,
        )
        .unwrap();
    drop(history);
    let reopened = History::open(dir.path()).unwrap();
    let digest = hex_digest(b"v1");
    assert_eq!(
        reopened
            .restore(tag, Some(&digest), false)
            .expect("kept")
            .current
            .bytes,
        b"v2"
    );
    // The admin upload was never signature-checked.
    assert!(reopened.restore(tag, Some(&digest), true).is_none());

    // A checked version serves, with an unchecked rollback target left out.
    reopened
        .record(
            tag,
            accepted(b"v3", tag).signed(true),
            Some(b"v3"),
            Some(accepted(b"v2", "admin")),
            false,
        )
        .unwrap();
    drop(reopened);
    let reopened = History::open(dir.path()).unwrap();
    let start = reopened.restore(tag, Some(&digest), true).expect("signed");
    assert_eq!(start.current.bytes, b"v3");
    assert!(start.previous.is_none());
}

#[test]
fn a_rollback_does_not_change_what_the_source_is_known_to_hold() {
    let dir = tempfile::tempdir().unwrap();
    let history = History::open(dir.path()).unwrap();
    let file = "/srv/endpoint.wasm";
    history
        .record(file, accepted(b"old", file), Some(b"old"), None, true)
        .unwrap();
    history
        .record(
            file,
            accepted(b"new", file),
            Some(b"new"),
            Some(accepted(b"old", file)),
            true,
        )
        .unwrap();
    // Rolled back to the old bytes: the file still holds the new ones.
    history
        .record(
            file,
            accepted(b"old", file),
            None,
            Some(accepted(b"new", file)),
            false,
        )
        .unwrap();
    drop(history);
    let reopened = History::open(dir.path()).unwrap();
    let start = reopened
        .restore(file, Some(&hex_digest(b"new")), false)
        .expect("the rollback stands");
    assert_eq!(start.current.bytes, b"old");
}

#[test]
fn damaged_records_are_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let history = History::open(dir.path()).unwrap();
    history
        .record(
            "embedded",
            accepted(b"v1", "embedded"),
            Some(b"v1"),
            None,
            true,
        )
        .unwrap();
    history
        .record(
            "embedded",
            accepted(b"v2", "admin"),
            Some(b"v2"),
            None,
            true,
        )
        .unwrap();
    std::fs::write(
        dir.path()
            .join(format!("sha256-{}.wasm", hex_digest(b"v2"))),
        b"tampered",
    )
    .unwrap();
    drop(history);
    let reopened = History::open(dir.path()).unwrap();
    assert!(
        reopened
            .restore("embedded", Some(&hex_digest(b"v1")), false)
            .is_none()
    );

    std::fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
    drop(reopened);
    let reopened = History::open(dir.path()).unwrap();
    assert!(
        reopened
            .restore("embedded", Some(&hex_digest(b"v1")), false)
            .is_none()
    );
}

#[test]
fn only_the_named_blobs_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let history = History::open(dir.path()).unwrap();
    for (i, bytes) in [b"v1", b"v2", b"v3"].iter().enumerate() {
        let previous = (i > 0).then(|| accepted([b"v1", b"v2"][i - 1], "admin"));
        history
            .record(
                "embedded",
                accepted(*bytes, "admin"),
                Some(*bytes),
                previous,
                true,
            )
            .unwrap();
    }
    let mut blobs: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("sha256-"))
        .collect();
    blobs.sort();
    let mut expected = vec![
        format!("sha256-{}.wasm", hex_digest(b"v2")),
        format!("sha256-{}.wasm", hex_digest(b"v3")),
    ];
    expected.sort();
    assert_eq!(blobs, expected);
}

#[test]
fn a_waiting_candidate_survives_a_restart_until_it_is_decided() {
    let dir = tempfile::tempdir().unwrap();
    let history = History::open(dir.path()).unwrap().new_versions_wait(true);
    let file = "/k.wasm";
    history
        .record(file, accepted(b"v1", file), Some(b"v1"), None, true)
        .unwrap();
    // The file's new content waits: noted as what the file holds.
    history
        .record_candidate(file, Some((accepted(b"v2", file), b"v2")))
        .unwrap();
    drop(history);
    let reopened = History::open(dir.path()).unwrap().new_versions_wait(true);
    let start = reopened
        .restore(file, Some(&hex_digest(b"v2")), false)
        .expect("the recorded version serves");
    assert_eq!(start.current.bytes, b"v1");
    assert_eq!(start.candidate.expect("still waiting").bytes, b"v2");
    assert!(!start.configured_waits);

    // Decided: it serves, and waits no more.
    reopened
        .record(
            file,
            accepted(b"v2", file),
            Some(b"v2"),
            Some(accepted(b"v1", file)),
            true,
        )
        .unwrap();
    let start = reopened
        .restore(file, Some(&hex_digest(b"v2")), false)
        .unwrap();
    assert_eq!(start.current.bytes, b"v2");
    assert!(start.candidate.is_none());

    // An upload waits, then is refused: forgotten, its bytes removed.
    reopened
        .record_candidate(file, Some((accepted(b"v3", "admin"), b"v3")))
        .unwrap();
    assert!(
        dir.path()
            .join(format!("sha256-{}.wasm", hex_digest(b"v3")))
            .exists()
    );
    reopened.record_candidate(file, None).unwrap();
    assert!(
        !dir.path()
            .join(format!("sha256-{}.wasm", hex_digest(b"v3")))
            .exists()
    );
    let start = reopened
        .restore(file, Some(&hex_digest(b"v2")), false)
        .unwrap();
    assert!(start.candidate.is_none());
}

#[test]
fn new_content_in_the_configured_source_waits_when_new_versions_do() {
    let dir = tempfile::tempdir().unwrap();
    let history = History::open(dir.path()).unwrap();
    let tag = "oci://127.0.0.1:5000/k:stable";
    history
        .record(tag, accepted(b"v1", tag), Some(b"v1"), None, true)
        .unwrap();
    drop(history);
    // Moved while the process was down.
    let moved = Some(hex_digest(b"v2"));
    let waiting = History::open(dir.path()).unwrap().new_versions_wait(true);
    let start = waiting.restore(tag, moved.as_deref(), false).unwrap();
    assert_eq!(start.current.bytes, b"v1");
    assert!(start.configured_waits);
    drop(waiting);
    let serving = History::open(dir.path()).unwrap();
    assert!(serving.restore(tag, moved.as_deref(), false).is_none());
}

/// A `state.json` without a schema, as written before it was recorded, is
/// read as before; what is written from then on says its schema.
#[test]
fn a_state_file_without_a_schema_is_read_and_rewritten_with_one() {
    let dir = tempfile::tempdir().unwrap();
    let history = History::open(dir.path()).unwrap();
    swap_v1_for_v2(&history);
    drop(history);
    let path = dir.path().join(STATE_FILE);
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(state["schema"], STATE_SCHEMA);
    state.as_object_mut().unwrap().remove("schema");
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();

    let reopened = History::open(dir.path()).unwrap();
    let start = reopened
        .restore("embedded", Some(&hex_digest(b"v1")), false)
        .expect("the older file is read");
    assert_eq!(start.current.bytes, b"v2");
}

/// A `state.json` a newer keybust wrote stops the start, saying so, rather
/// than being taken for a damaged file and replaced.
#[test]
fn a_state_file_from_a_newer_keybust_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STATE_FILE);
    std::fs::create_dir_all(dir.path()).unwrap();
    let newer = format!(r#"{{"schema": {}, "layout": "other"}}"#, STATE_SCHEMA + 1);
    std::fs::write(&path, &newer).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    match History::open(dir.path()) {
        Err(err @ HistoryError::NewerSchema { .. }) => {
            let said = err.to_string();
            assert!(said.contains("newer keybust"), "{said}");
            assert!(
                said.contains(&format!("schema {}", STATE_SCHEMA + 1)),
                "{said}"
            );
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a newer state file was taken"),
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), newer);
}
