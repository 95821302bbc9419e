//! Under systemd: readiness, stopping and watchdog notifications on a
//! test-owned `NOTIFY_SOCKET`, and a listener passed by socket activation.

use crate::support::{ENDPOINT, Keybust};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

/// The messages that arrive on `socket` within `limit`, until `until` is
/// among them.
fn messages_until(socket: &UnixDatagram, until: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen
        .iter()
        .any(|m: &String| m.lines().any(|line| line == until))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {until} within {limit:?}; got {seen:?}");
        socket.set_read_timeout(Some(left)).unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => seen.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(err) => panic!("no {until} within {limit:?} ({err}); got {seen:?}"),
        }
    }
    seen
}

#[test]
fn the_service_manager_hears_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut keybust = Keybust::start(
        &["serve"],
        &[
            ("KEYBUST_CACHE", "embedded".to_owned()),
            ("NOTIFY_SOCKET", path.display().to_string()),
            // A ping every 100 ms.
            ("WATCHDOG_USEC", "200000".to_owned()),
        ],
    );
    // The listening line came first; when READY=1 arrives, the listener
    // takes connections.
    let before_ready = messages_until(&socket, "READY=1", Duration::from_secs(10));
    assert!(
        !before_ready[..before_ready.len() - 1]
            .iter()
            .any(|m| m.contains("STOPPING")),
        "{before_ready:?}"
    );
    std::net::TcpStream::connect(keybust.addr).expect("ready, but not accepting");
    // Pings keep coming while it serves.
    let pings = messages_until(&socket, "WATCHDOG=1", Duration::from_secs(5));
    assert!(pings.iter().all(|m| !m.contains("STOPPING")), "{pings:?}");
    messages_until(&socket, "WATCHDOG=1", Duration::from_secs(5));

    keybust.signal(libc::SIGTERM);
    messages_until(&socket, "STOPPING=1", Duration::from_secs(10));
    assert!(keybust.wait_exit(Duration::from_secs(20)).success());
}

#[test]
fn without_a_notify_socket_nothing_is_sent_and_it_serves() {
    // The variables systemd sets are all that turns notifications on: with
    // none, keybust starts, serves and stops as before.
    let mut keybust = Keybust::start(&["serve"], &[("KEYBUST_CACHE", "embedded".to_owned())]);
    std::net::TcpStream::connect(keybust.addr).unwrap();
    keybust.signal(libc::SIGTERM);
    assert!(keybust.wait_exit(Duration::from_secs(20)).success());
    assert!(
        !keybust.logs().contains("service manager"),
        "{}",
        keybust.logs()
    );
}

/// Passes `listener` to the child as its first socket (fd 3), the way
/// systemd does with `LISTEN_FDS=1`.
fn pass_as_fd3(command: &mut std::process::Command, listener: &std::net::TcpListener) {
    let fd = listener.as_raw_fd();
    // SAFETY: between fork and exec only dup2 and fcntl run, both
    // async-signal-safe; `fd` stays open in the parent until the child runs.
    unsafe {
        command.pre_exec(move || {
            if fd == 3 {
                // Already in place: only the close-on-exec flag must go.
                if libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[tokio::test]
async fn a_listener_passed_by_socket_activation_is_served() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let passed = listener.local_addr().unwrap();
    let keybust = tokio::task::spawn_blocking(move || {
        Keybust::start_with(
            &["serve"],
            &[
                ("KEYBUST_CACHE", "embedded".to_owned()),
                ("LISTEN_FDS", "1".to_owned()),
            ],
            |command| pass_as_fd3(command, &listener),
        )
    })
    .await
    .unwrap();
    // KEYBUST_LISTEN asked for a fresh port; the passed socket won.
    assert_eq!(keybust.addr, passed);
    let answer = reqwest::Client::new()
        .post(format!("http://{passed}{ENDPOINT}"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    assert!(
        keybust
            .logs()
            .contains("serving sockets passed by the service manager")
    );
    // The admin listener, not passed, was bound from its setting.
    assert!(
        keybust
            .admin
            .is_some_and(|admin| admin.port() != passed.port())
    );
}
