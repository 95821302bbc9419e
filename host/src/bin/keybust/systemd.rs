//! Running under systemd, or anything that speaks its protocols: readiness
//! and watchdog notifications on `NOTIFY_SOCKET`, and listeners passed by
//! socket activation (`LISTEN_FDS`). Without those variables every function
//! here does nothing.

use anyhow::Context;

/// The listeners a passed socket can be, by the name a socket unit gives
/// it (`FileDescriptorName=`), and, for sockets without such names, in the
/// order they are passed.
pub const LISTENERS: [&str; 3] = ["public", "admin", "metrics"];

/// Sockets handed over by the service manager. A socket unit that names
/// them (`FileDescriptorName=public`, `admin` or `metrics`, which systemd
/// passes in `LISTEN_FDNAMES`) says which is which; otherwise they are
/// taken in the order the units list them: the public listener, then the
/// admin listener, then the probes-only one. A listener not passed is
/// bound from its flag.
pub struct Inherited {
    fds: listenfd::ListenFd,
    /// `LISTEN_FDNAMES`, one name per passed socket, when set.
    names: Option<Vec<String>>,
    /// Why passed sockets were set aside, told once logging is up.
    ignored: Option<String>,
}

impl Inherited {
    /// Reads and unsets `LISTEN_FDS` and `LISTEN_PID`. Unsetting variables
    /// is only sound while the process has one thread, so this runs first
    /// thing in `main`. Sockets are taken only when `LISTEN_PID` names this
    /// process, as systemd sets it: a `LISTEN_FDS` inherited by accident
    /// from some other activated process does not turn arbitrary file
    /// descriptors into listeners.
    pub fn from_env() -> Self {
        let passed = std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|count| count.parse::<u32>().ok())
            .is_some_and(|count| count > 0);
        let ours = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| pid == std::process::id());
        let names = std::env::var("LISTEN_FDNAMES")
            .ok()
            .map(|names| names.split(':').map(str::to_owned).collect());
        // SAFETY: first thing in `main`, while the process has one thread
        // (as for the variables `ListenFd::from_env` unsets).
        unsafe { std::env::remove_var("LISTEN_FDNAMES") };
        let fds = listenfd::ListenFd::from_env();
        if passed && ours {
            close_on_exec(fds.len());
        }
        if passed && !ours {
            return Inherited {
                fds: listenfd::ListenFd::empty(),
                names: None,
                ignored: Some(
                    "LISTEN_FDS is set but LISTEN_PID does not name this process: passed sockets ignored"
                        .to_owned(),
                ),
            };
        }
        Inherited {
            fds,
            names,
            ignored: None,
        }
    }

    /// Where the `what` listener's socket is among those passed: by its
    /// name when the sockets carry keybust's names, else by its place in
    /// [`LISTENERS`]. Names that mix keybust's with others, or repeat
    /// one, stop keybust: taken by order, a socket named `public` served
    /// the admin API.
    fn index_of(&self, what: &str) -> anyhow::Result<Option<usize>> {
        let count = self.fds.len();
        let names = match &self.names {
            Some(names) if names.iter().any(|name| LISTENERS.contains(&name.as_str())) => names,
            // systemd's default names (the socket unit's name), or none.
            _ => {
                let index = LISTENERS.iter().position(|listener| *listener == what);
                return Ok(index.filter(|index| *index < count));
            }
        };
        anyhow::ensure!(
            names.len() == count,
            "LISTEN_FDNAMES names {} sockets, but LISTEN_FDS passes {count}",
            names.len()
        );
        for (index, name) in names.iter().enumerate() {
            anyhow::ensure!(
                LISTENERS.contains(&name.as_str()),
                "socket {} is named {name:?} (LISTEN_FDNAMES); keybust's sockets are named public, admin or metrics (FileDescriptorName=)",
                index + 3
            );
            anyhow::ensure!(
                !names[..index].contains(name),
                "two sockets are named {name:?} (LISTEN_FDNAMES)"
            );
        }
        Ok(names.iter().position(|name| name == what))
    }

    /// How many sockets were passed; more than keybust has listeners is an
    /// error (a socket unit that does not match this version).
    pub fn count(&self) -> anyhow::Result<usize> {
        if let Some(why) = &self.ignored {
            tracing::warn!("{why}");
        }
        let count = self.fds.len();
        anyhow::ensure!(
            count <= LISTENERS.len(),
            "LISTEN_FDS passes {count} sockets; keybust takes at most 3 (public, admin, metrics: named so, or in that order)"
        );
        Ok(count)
    }

    /// The `what` listener (one of [`LISTENERS`]), if its socket was
    /// passed; an error if what was passed for it is not a listening TCP
    /// socket.
    pub fn take(&mut self, what: &str) -> anyhow::Result<Option<tokio::net::TcpListener>> {
        let Some(index) = self.index_of(what)? else {
            return Ok(None);
        };
        let fd = index + 3;
        let Some(listener) = self
            .fds
            .take_tcp_listener(index)
            .with_context(|| format!("socket {fd} passed for the {what} listener (LISTEN_FDS)"))?
        else {
            return Ok(None);
        };
        anyhow::ensure!(
            is_listening(&listener),
            "socket {fd} passed for the {what} listener (LISTEN_FDS) is not listening (a socket unit with Accept=yes?)"
        );
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .map(Some)
            .with_context(|| format!("cannot serve the {what} listener passed by LISTEN_FDS"))
    }
}

/// Marks the `count` passed descriptors (3, 4, ...) close-on-exec, as
/// sockets keybust opens itself are: otherwise every process keybust
/// starts (a docker credential helper during a pull) would inherit the
/// listening sockets, and could accept on them or keep them open past
/// keybust's exit. Only for sockets passed to this process: the service
/// manager's `LISTEN_FDS` says they are open.
#[cfg(unix)]
fn close_on_exec(count: usize) {
    use std::os::fd::BorrowedFd;
    for fd in 3..3 + count as i32 {
        // SAFETY: the service manager passed `fd` open (LISTEN_FDS, with
        // LISTEN_PID naming this process), and nothing closes it while it
        // is borrowed for this one call, first thing in `main`.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC);
    }
}

#[cfg(not(unix))]
fn close_on_exec(_: usize) {}

#[cfg(unix)]
fn is_listening(listener: &std::net::TcpListener) -> bool {
    rustix::net::sockopt::socket_acceptconn(listener).unwrap_or(false)
}

#[cfg(not(unix))]
fn is_listening(_: &std::net::TcpListener) -> bool {
    true
}

/// What keybust tells the service manager.
#[derive(Debug)]
enum State {
    /// `READY=1`, with a `STATUS=` line (what `systemctl status` shows).
    Ready(String),
    /// `STOPPING=1`, with a `STATUS=` line.
    Stopping(String),
    Watchdog,
    /// Not a notification: answered once everything queued before it has
    /// been sent.
    #[cfg_attr(not(unix), allow(dead_code))]
    Flush(std::sync::mpsc::Sender<()>),
}

/// Notifications leave from a thread of their own: sending on the
/// notification socket blocks when the service manager's queue is full,
/// and that must never hold up a thread that serves requests.
#[cfg(unix)]
mod sender {
    use super::State;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::Sender;
    use std::sync::{Arc, OnceLock};

    struct Notifier {
        queue: Sender<State>,
        /// A ping waits to be sent: the watchdog adds none until it has
        /// left, so a stuck socket cannot grow the queue.
        ping_pending: Arc<AtomicBool>,
    }

    fn notifier() -> Option<&'static Notifier> {
        static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();
        NOTIFIER
            .get_or_init(|| {
                std::env::var_os("NOTIFY_SOCKET")?;
                let (queue, states) = std::sync::mpsc::channel::<State>();
                let ping_pending = Arc::new(AtomicBool::new(false));
                let pending = ping_pending.clone();
                let spawned = std::thread::Builder::new()
                    .name("keybust-notify".into())
                    .spawn(move || {
                        for state in states {
                            let (message, what) = match &state {
                                State::Ready(status) => (
                                    vec![
                                        sd_notify::NotifyState::Ready,
                                        sd_notify::NotifyState::Status(status),
                                    ],
                                    "ready",
                                ),
                                State::Stopping(status) => (
                                    vec![
                                        sd_notify::NotifyState::Stopping,
                                        sd_notify::NotifyState::Status(status),
                                    ],
                                    "stopping",
                                ),
                                State::Watchdog => (vec![sd_notify::NotifyState::Watchdog], "alive"),
                                State::Flush(done) => {
                                    let _ = done.send(());
                                    continue;
                                }
                            };
                            if let Err(err) = sd_notify::notify(&message) {
                                tracing::warn!(error = %err, "cannot tell the service manager keybust is {what}");
                            }
                            if matches!(state, State::Watchdog) {
                                pending.store(false, Ordering::Release);
                            }
                        }
                    });
                match spawned {
                    Ok(_) => Some(Notifier {
                        queue,
                        ping_pending,
                    }),
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot start the notification thread: the service manager hears nothing");
                        None
                    }
                }
            })
            .as_ref()
    }

    pub(super) fn send(state: State) {
        let Some(notifier) = notifier() else { return };
        if matches!(state, State::Watchdog) && notifier.ping_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = notifier.queue.send(state);
    }

    pub(super) fn watchdog_period() -> Option<std::time::Duration> {
        sd_notify::watchdog_enabled()
    }

    pub(super) fn flush(limit: std::time::Duration) {
        let Some(notifier) = notifier() else { return };
        let (done, flushed) = std::sync::mpsc::channel();
        if notifier.queue.send(State::Flush(done)).is_ok() {
            let _ = flushed.recv_timeout(limit);
        }
    }
}

#[cfg(not(unix))]
mod sender {
    use super::State;

    pub(super) fn send(_: State) {}

    pub(super) fn watchdog_period() -> Option<std::time::Duration> {
        None
    }

    pub(super) fn flush(_: std::time::Duration) {}
}

/// Every listener is bound and served: `READY=1`, and `status` for
/// `systemctl status` to show.
pub fn ready(status: String) {
    sender::send(State::Ready(status));
}

/// The drain has begun: `STOPPING=1`, and a `STATUS=` line saying so.
pub fn stopping() {
    sender::send(State::Stopping(
        "draining: in-flight requests finish within --shutdown-grace".to_owned(),
    ));
}

/// Waits, a second at most, for what is queued (`STOPPING=1` at the end)
/// to reach the service manager before the process exits.
pub fn flush() {
    sender::flush(std::time::Duration::from_secs(1));
}

/// With `WATCHDOG_USEC` set, sends `WATCHDOG=1` at half that period from a
/// task on the serving runtime, so a runtime that stops making progress
/// stops the pings and the service manager restarts keybust.
pub fn start_watchdog() {
    let Some(period) = sender::watchdog_period() else {
        return;
    };
    let every = (period / 2).max(std::time::Duration::from_millis(10));
    tracing::info!(?period, "systemd watchdog: pinging every half period");
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            sender::send(State::Watchdog);
        }
    });
}
