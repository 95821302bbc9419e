//! Running under systemd, or anything that speaks its protocols: readiness
//! and watchdog notifications on `NOTIFY_SOCKET`, and listeners passed by
//! socket activation (`LISTEN_FDS`). Without those variables every function
//! here does nothing.

use anyhow::Context;

/// Sockets handed over by the service manager, in the order its socket
/// unit lists them: the public listener, then the admin listener, then
/// the probes-only one. A listener not passed is bound from its flag.
pub struct Inherited(listenfd::ListenFd);

/// Which inherited socket is which listener.
pub const PUBLIC: usize = 0;
/// The admin listener's socket, if passed.
pub const ADMIN: usize = 1;
/// The probes-only listener's socket, if passed.
pub const METRICS: usize = 2;

impl Inherited {
    /// Reads and unsets `LISTEN_FDS` and `LISTEN_PID`. Unsetting variables
    /// is only sound while the process has one thread, so this runs first
    /// thing in `main`.
    pub fn from_env() -> Self {
        Inherited(listenfd::ListenFd::from_env())
    }

    /// How many sockets were passed.
    pub fn count(&self) -> usize {
        self.0.len()
    }

    /// The listener at `index`, if one was passed; an error if what was
    /// passed there is not a listening TCP socket.
    pub fn take(
        &mut self,
        index: usize,
        what: &str,
    ) -> anyhow::Result<Option<tokio::net::TcpListener>> {
        let Some(listener) = self.0.take_tcp_listener(index).with_context(|| {
            format!(
                "socket {} passed for the {what} listener (LISTEN_FDS)",
                index + 3
            )
        })?
        else {
            return Ok(None);
        };
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .map(Some)
            .with_context(|| format!("cannot serve the {what} listener passed by LISTEN_FDS"))
    }
}

/// What keybust tells the service manager.
#[derive(Clone, Copy)]
enum State {
    Ready,
    Stopping,
    Watchdog,
}

#[cfg(unix)]
fn notify(state: State) {
    let (state, what) = match state {
        State::Ready => (sd_notify::NotifyState::Ready, "ready"),
        State::Stopping => (sd_notify::NotifyState::Stopping, "stopping"),
        State::Watchdog => (sd_notify::NotifyState::Watchdog, "alive"),
    };
    if let Err(err) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %err, "cannot tell the service manager keybust is {what}");
    }
}

#[cfg(not(unix))]
fn notify(_: State) {}

#[cfg(unix)]
fn watchdog_period() -> Option<std::time::Duration> {
    sd_notify::watchdog_enabled()
}

#[cfg(not(unix))]
fn watchdog_period() -> Option<std::time::Duration> {
    None
}

/// Every listener accepts: `READY=1`.
pub fn ready() {
    notify(State::Ready);
}

/// The drain has begun: `STOPPING=1`.
pub fn stopping() {
    notify(State::Stopping);
}

/// With `WATCHDOG_USEC` set, sends `WATCHDOG=1` at half that period from a
/// task on the serving runtime, so a runtime that stops making progress
/// stops the pings and the service manager restarts keybust.
pub fn start_watchdog() {
    let Some(period) = watchdog_period() else {
        return;
    };
    let every = (period / 2).max(std::time::Duration::from_millis(10));
    tracing::info!(?period, "systemd watchdog: pinging every half period");
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            notify(State::Watchdog);
        }
    });
}
