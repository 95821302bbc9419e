//! Under systemd: readiness, stopping and watchdog notifications on a
//! test-owned `NOTIFY_SOCKET`, and listeners passed by socket activation.

use crate::support::process::{binary, refused};
use crate::support::{ENDPOINT, Keybust};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::Command;
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

/// A POST without a token, over plain HTTP/1.1: 401 once keybust serves.
fn status_of_post(addr: std::net::SocketAddr) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "POST {ENDPOINT} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
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
            // A ping every half second.
            ("WATCHDOG_USEC", "1000000".to_owned()),
        ],
    );
    let before_ready = messages_until(&socket, "READY=1", Duration::from_secs(10));
    assert!(
        !before_ready.iter().any(|m| m.contains("STOPPING")),
        "{before_ready:?}"
    );
    // `systemctl status` shows where it serves.
    let public = format!("listening on http://{}", keybust.addr);
    assert!(
        before_ready.iter().any(|m| m
            .lines()
            .any(|line| line.starts_with("STATUS=serving") && line.contains(&public))),
        "{before_ready:?}"
    );
    // Ready means served.
    assert_eq!(status_of_post(keybust.addr), 401);
    // Pings keep coming while it serves.
    for _ in 0..2 {
        let pings = messages_until(&socket, "WATCHDOG=1", Duration::from_secs(5));
        assert!(pings.iter().all(|m| !m.contains("STOPPING")), "{pings:?}");
    }

    keybust.signal(libc::SIGTERM);
    let stopping = messages_until(&socket, "STOPPING=1", Duration::from_secs(10));
    assert!(
        stopping
            .iter()
            .any(|m| m.lines().any(|line| line.starts_with("STATUS=draining"))),
        "{stopping:?}"
    );
    assert!(keybust.wait_exit(Duration::from_secs(20)).success());
}

#[test]
fn without_a_notify_socket_nothing_is_sent_and_it_serves() {
    // The variables systemd sets are all that turns notifications on: with
    // none, keybust starts, serves and stops as before.
    let mut keybust = Keybust::start(&["serve"], &[("KEYBUST_CACHE", "embedded".to_owned())]);
    assert_eq!(status_of_post(keybust.addr), 401);
    keybust.signal(libc::SIGTERM);
    assert!(keybust.wait_exit(Duration::from_secs(20)).success());
    assert!(
        !keybust.logs().contains("service manager"),
        "{}",
        keybust.logs()
    );
}

/// Hands `fds` to the child as 3, 4, ... the way systemd does. First each
/// is copied above the range, so that one landing on another's place
/// cannot clobber it.
fn pass_fds(command: &mut Command, fds: Vec<RawFd>) {
    // SAFETY: between fork and exec only fcntl and dup2 run, both
    // async-signal-safe, on descriptors the parent keeps open until the
    // child has started; nothing allocates.
    unsafe {
        command.pre_exec(move || {
            let mut high = [0; 8];
            for (slot, fd) in high.iter_mut().zip(&fds) {
                *slot = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
                if *slot == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (index, fd) in high.iter().take(fds.len()).enumerate() {
                if libc::dup2(*fd, 3 + index as RawFd) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// `keybust serve` with `fds` passed and `LISTEN_FDS` set; with
/// `own_pid`, `LISTEN_PID` names keybust's process, as systemd sets it
/// (a shell that sets it to its own pid, then execs keybust).
fn activated(fds: Vec<RawFd>, own_pid: bool) -> Command {
    activated_named(fds, own_pid, None)
}

/// [`activated`], with `LISTEN_FDNAMES` set to `names` when given, as
/// systemd sets it from the socket units' `FileDescriptorName=`.
fn activated_named(fds: Vec<RawFd>, own_pid: bool, names: Option<&str>) -> Command {
    let pid = if own_pid { "LISTEN_PID=$$ " } else { "" };
    let names = names
        .map(|names| format!("LISTEN_FDNAMES={names} "))
        .unwrap_or_default();
    let script = format!(r#"{pid}{names}LISTEN_FDS={} exec "$@""#, fds.len());
    let mut command = Command::new("/bin/sh");
    command
        .env_clear()
        .args(["-c", &script, "sh"])
        .arg(binary())
        .arg("serve");
    pass_fds(&mut command, fds);
    command
}

/// `keybust` serves the endpoint on `public` and the admin API on `admin`.
async fn assert_serves_on(
    keybust: &Keybust,
    public: std::net::SocketAddr,
    admin: std::net::SocketAddr,
) {
    assert_eq!(keybust.addr, public);
    assert_eq!(keybust.admin, Some(admin));
    assert_eq!(status_of_post(public), 401);
    let health = reqwest::get(format!("http://{admin}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

fn env() -> Vec<(&'static str, String)> {
    vec![("KEYBUST_CACHE", "embedded".to_owned())]
}

#[tokio::test]
async fn listeners_passed_by_socket_activation_are_served_in_order() {
    let public = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (public_addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
    let keybust = tokio::task::spawn_blocking(move || {
        let command = activated(vec![public.as_raw_fd(), admin.as_raw_fd()], true);
        Keybust::start_command(command, &env())
    })
    .await
    .unwrap();
    // KEYBUST_LISTEN and KEYBUST_ADMIN_LISTEN asked for fresh ports; the
    // passed sockets won, first the public one, then the admin one.
    assert_serves_on(&keybust, public_addr, admin_addr).await;
    assert!(
        keybust
            .logs()
            .contains("serving sockets passed by the service manager")
    );
}

/// Sockets a socket unit names (`FileDescriptorName=admin`, `public`) are
/// taken by name, whatever their order: taken by order, a socket named
/// `public` passed second served the admin API. systemd's default names
/// (the unit's own) leave the order in charge; a stranger among keybust's
/// names stops it.
#[tokio::test]
async fn passed_sockets_are_taken_by_their_names() {
    let public = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (public_addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
    let keybust = tokio::task::spawn_blocking(move || {
        let command = activated_named(
            vec![admin.as_raw_fd(), public.as_raw_fd()],
            true,
            Some("admin:public"),
        );
        Keybust::start_command(command, &env())
    })
    .await
    .unwrap();
    assert_serves_on(&keybust, public_addr, admin_addr).await;
    drop(keybust);

    // Names systemd gives by default: the order decides.
    let public = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let public_addr = public.local_addr().unwrap();
    let keybust = tokio::task::spawn_blocking(move || {
        let command = activated_named(vec![public.as_raw_fd()], true, Some("keybust.socket"));
        Keybust::start_command(command, &env())
    })
    .await
    .unwrap();
    assert_eq!(keybust.addr, public_addr);
    drop(keybust);

    let sockets: Vec<_> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let said = refused_activation(
        sockets.iter().map(AsRawFd::as_raw_fd).collect(),
        Some("public:dashboard"),
    );
    assert!(said.contains("named \"dashboard\""), "{said}");
}

#[tokio::test]
async fn sockets_not_meant_for_keybust_are_not_taken() {
    // LISTEN_FDS without a LISTEN_PID naming keybust: the descriptors are
    // someone else's, and keybust binds its own listener.
    let stray = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stray_addr = stray.local_addr().unwrap();
    let keybust = tokio::task::spawn_blocking(move || {
        Keybust::start_command(activated(vec![stray.as_raw_fd()], false), &env())
    })
    .await
    .unwrap();
    assert_ne!(keybust.addr, stray_addr);
    assert_eq!(status_of_post(keybust.addr), 401);
    assert!(
        keybust
            .logs()
            .contains("LISTEN_PID does not name this process")
    );
}

/// `keybust serve` activated with `fds` (named `names`), which must refuse
/// to start; its stderr.
fn refused_activation(fds: Vec<RawFd>, names: Option<&str>) -> String {
    let state = tempfile::tempdir().unwrap();
    let mut command = activated_named(fds, true, names);
    command
        .env("KEYBUST_CACHE", "embedded")
        .env("KEYBUST_LISTEN", "127.0.0.1:0")
        .env("KEYBUST_ADMIN_LISTEN", "127.0.0.1:0")
        .env("KEYBUST_STATE_DIR", state.path())
        .env("KEYBUST_COMPONENT_CACHE_DIR", state.path().join("cache"));
    refused(command)
}

#[test]
fn a_passed_socket_that_is_not_listening_stops_startup() {
    // A connected socket, as a socket unit with Accept=yes would pass.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let connected = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let stderr = refused_activation(vec![connected.as_raw_fd()], None);
    assert!(stderr.contains("is not listening"), "{stderr}");

    // More sockets than keybust has listeners: a unit for another version.
    let sockets: Vec<_> = (0..4)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let stderr = refused_activation(sockets.iter().map(AsRawFd::as_raw_fd).collect(), None);
    assert!(stderr.contains("keybust takes at most 3"), "{stderr}");
}

/// Sockets passed by the service manager are not handed on: a docker
/// credential helper that keybust runs for its start-up pull has none of
/// them among its open descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passed_sockets_do_not_leak_into_credential_helpers() {
    use crate::support::fleet::{push, variant};
    use crate::support::registry::OciRegistry;
    let registry = tokio::task::spawn_blocking(OciRegistry::start)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let reference = registry.reference("keybust/endpoint:stable");
    push(dir.path(), &variant("pulled at start"), &reference);

    // A credential helper that writes down its own open descriptors.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let helper = bin.join("docker-credential-fdlist");
    let seen = dir.path().join("helper-fds");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nls -l /proc/$$/fd > {}\ncat > /dev/null\necho '{{\"ServerURL\":\"\",\"Username\":\"u\",\"Secret\":\"p\"}}'\n",
            seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        format!(
            r#"{{"credHelpers":{{"127.0.0.1:{}":"fdlist"}}}}"#,
            registry.port
        ),
    )
    .unwrap();

    let public = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let public_addr = public.local_addr().unwrap();
    let mut env = env();
    env.extend([
        ("PATH", format!("{}:/usr/bin:/bin", bin.display())),
        ("DOCKER_CONFIG", dir.path().display().to_string()),
    ]);
    let keybust = tokio::task::spawn_blocking(move || {
        let mut command = activated(vec![public.as_raw_fd()], true);
        command.arg("--component").arg(&reference);
        Keybust::start_command(command, &env)
    })
    .await
    .unwrap();
    assert_eq!(keybust.addr, public_addr);
    let fds = std::fs::read_to_string(&seen).expect("the credential helper ran");
    assert!(
        !fds.contains("socket:"),
        "the helper inherited sockets:\n{fds}"
    );
}
