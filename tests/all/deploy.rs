//! The deployment files under `deploy/` (the systemd units, the Dockerfile,
//! the Kubernetes manifests) are configuration keybust never reads, so
//! nothing else notices when they drift from it. These tests read them as
//! systemd, Docker and Kubernetes would, and check that they name only
//! settings `keybust serve --help` lists, and that they agree with keybust
//! and with each other where they meet: the ports probes and Services
//! reach, the time a stop takes, who keybust runs as.

use crate::settings::{is_env, listed, serve_help};
use serde::Deserialize;
use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

const K8S: &str = "deploy/k8s";
const SERVICE: &str = "deploy/systemd/keybust.service";
const SOCKET: &str = "deploy/systemd/keybust.socket";
const DOCKERFILE: &str = "deploy/Dockerfile";
const BUILD_SCRIPT: &str = "host/build.rs";

/// A setting, by its flag and its environment twin.
#[derive(Clone, Copy)]
struct Setting {
    flag: &'static str,
    env: &'static str,
}

const LISTEN: Setting = Setting {
    flag: "--listen",
    env: "KEYBUST_LISTEN",
};
const ADMIN_LISTEN: Setting = Setting {
    flag: "--admin-listen",
    env: "KEYBUST_ADMIN_LISTEN",
};
const METRICS_LISTEN: Setting = Setting {
    flag: "--metrics-listen",
    env: "KEYBUST_METRICS_LISTEN",
};
const SHUTDOWN_DELAY: Setting = Setting {
    flag: "--shutdown-delay",
    env: "KEYBUST_SHUTDOWN_DELAY",
};
const SHUTDOWN_GRACE: Setting = Setting {
    flag: "--shutdown-grace",
    env: "KEYBUST_SHUTDOWN_GRACE",
};
const STATE_DIR: Setting = Setting {
    flag: "--state-dir",
    env: "KEYBUST_STATE_DIR",
};
const CACHE_DIR: Setting = Setting {
    flag: "--cache-dir",
    env: "KEYBUST_CACHE_DIR",
};

const TLS_CERT: Setting = Setting {
    flag: "--tls-cert",
    env: "KEYBUST_TLS_CERT",
};
const TLS_LISTENERS: Setting = Setting {
    flag: "--tls-listeners",
    env: "KEYBUST_TLS_LISTENERS",
};

/// The listeners in the order keybust takes the sockets systemd passes
/// (`LISTEN_FDS`): fd 3 is the public one, then the admin one, then the
/// metrics one.
const PASSED_SOCKETS: [Setting; 3] = [LISTEN, ADMIN_LISTEN, METRICS_LISTEN];

/// What `keybust serve --help` lists, read once per test binary.
struct Help {
    flags: BTreeSet<String>,
    envs: BTreeSet<String>,
    /// The twins whose values `--help` hides (`[env: NAME]`, no `=`): the
    /// secrets, which belong in a Secret or an environment file, never in
    /// a plain value a deployment file shows.
    secrets: BTreeSet<String>,
    text: String,
}

fn help() -> &'static Help {
    static HELP: OnceLock<Help> = OnceLock::new();
    HELP.get_or_init(|| {
        let (flags, envs) = listed();
        let text = serve_help();
        let secrets: BTreeSet<String> = text
            .split("[env: ")
            .skip(1)
            .filter_map(|rest| {
                let name: String = rest
                    .chars()
                    .take_while(|c| *c != '=' && *c != ']')
                    .collect();
                rest[name.len()..].starts_with(']').then_some(name)
            })
            .collect();
        assert!(
            secrets.contains("KEYBUST_ADMIN_TOKEN"),
            "`keybust serve --help` no longer hides the admin token: {secrets:?}"
        );
        Help {
            flags,
            envs,
            secrets,
            text,
        }
    })
}

impl Help {
    /// The default `--help` states for `flag` on a line of its own
    /// (`[default: 30s]`); none for defaults described in prose.
    fn default_of(&self, flag: &str) -> Option<&str> {
        let mut lines = self.text.lines().map(str::trim_start);
        lines.find(|line| line.split([' ', '=', ',']).next() == Some(flag))?;
        lines
            .take_while(|line| !line.starts_with("--"))
            .find_map(|line| line.strip_prefix("[default: ")?.strip_suffix(']'))
    }
}

/// How one deployment file starts keybust: the arguments after the binary,
/// and the environment it sets (`None` for a value taken from elsewhere,
/// such as a Secret).
struct Launch {
    /// The file, and where in it, for messages.
    place: String,
    args: Vec<String>,
    env: BTreeMap<String, Option<String>>,
}

impl Launch {
    /// A setting's value: its flag (which wins, as on the command line),
    /// else its environment twin, else the default `--help` states.
    fn get(&self, setting: Setting) -> Option<String> {
        flag_value(&self.args, setting.flag)
            .or_else(|| self.env.get(setting.env).cloned().flatten())
            .or_else(|| help().default_of(setting.flag).map(str::to_owned))
    }

    /// A listener's address, parsed as keybust parses it; none when the
    /// listener is off.
    fn address(&self, setting: Setting) -> Option<SocketAddr> {
        let value = self.get(setting)?;
        let address = value.parse().unwrap_or_else(|err| {
            panic!(
                "{}: {} = {value:?} is not an address: {err}",
                self.place, setting.env
            )
        });
        Some(address)
    }

    /// A duration setting, parsed as keybust parses it.
    fn duration(&self, setting: Setting) -> Duration {
        let value = self.get(setting).unwrap_or_else(|| {
            panic!(
                "{}: {} is not set, and `--help` states no default",
                self.place, setting.env
            )
        });
        keybust::config::parse_duration(&value)
            .unwrap_or_else(|err| panic!("{}: {} = {value:?}: {err}", self.place, setting.env))
    }

    /// The longest keybust takes to stop after SIGTERM: the shutdown
    /// delay (still accepting), then the grace for in-flight requests.
    fn stop_time(&self) -> Duration {
        self.duration(SHUTDOWN_DELAY) + self.duration(SHUTDOWN_GRACE)
    }

    /// Whether `listener` (`public`, `admin` or `metrics`) speaks TLS: a
    /// certificate is set, and the listener is among the TLS listeners
    /// (the public one alone by default).
    fn speaks_tls(&self, listener: &str) -> bool {
        self.get(TLS_CERT).is_some()
            && self
                .get(TLS_LISTENERS)
                .unwrap_or_else(|| "public".to_owned())
                .split(',')
                .any(|name| name.trim() == listener)
    }

    /// The port of a listener others must reach (a load balancer, the
    /// kubelet, another container): it must be set, and not on loopback.
    fn reachable_port(&self, setting: Setting, problems: &mut Vec<String>) -> Option<u16> {
        let Some(address) = self.address(setting) else {
            problems.push(format!("{}: {} is not set", self.place, setting.env));
            return None;
        };
        if address.ip().is_loopback() {
            problems.push(format!(
                "{}: {} = {address} is loopback, out of reach of everything outside",
                self.place, setting.env
            ));
        }
        Some(address.port())
    }

    /// Records every flag and environment name `--help` does not list, and
    /// every secret given as a plain value; returns how many names were
    /// checked.
    fn check_names(&self, problems: &mut Vec<String>) -> usize {
        let help = help();
        let flags: Vec<&str> = self
            .args
            .iter()
            .filter(|arg| arg.starts_with("--"))
            .map(|arg| arg.split_once('=').map_or(arg.as_str(), |(flag, _)| flag))
            .collect();
        for flag in &flags {
            if !help.flags.contains(*flag) {
                problems.push(format!(
                    "{}: flag {flag} is not in `keybust serve --help`",
                    self.place
                ));
            }
        }
        for (name, value) in &self.env {
            if !help.envs.contains(name) {
                problems.push(format!(
                    "{}: {name} is not an environment twin in `keybust serve --help`",
                    self.place
                ));
            }
            if value.is_some() && help.secrets.contains(name) {
                problems.push(format!(
                    "{}: {name} is a secret, given here as a plain value; give it from a Secret or an environment file",
                    self.place
                ));
            }
        }
        flags.len() + self.env.len()
    }
}

/// The value `args` give `flag`, as `--flag value` or `--flag=value`.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == flag {
            return args.next().cloned();
        }
        if let Some(value) = arg
            .strip_prefix(flag)
            .and_then(|rest| rest.strip_prefix('='))
        {
            return Some(value.to_owned());
        }
    }
    None
}

/// Splits `line` into words as systemd and Docker do in the simple cases
/// the deployment files use: at whitespace outside double quotes, the
/// quotes dropped.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The workspace's root, where `deploy/` is.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ lives in the workspace")
}

/// A file of the workspace, by its path from the root.
fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|err| panic!("{path}: {err}"))
}

// ---------------------------------------------------------------------------
// Kubernetes

/// Every YAML document under `deploy/k8s`, with the file it is in.
fn manifests() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(K8S))
        .unwrap_or_else(|err| panic!("{K8S}: {err}"))
        .map(|entry| entry.expect("an entry of deploy/k8s").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    let mut documents = Vec::new();
    for path in files {
        let name = path.file_name().expect("a file name").to_string_lossy();
        let file = format!("{K8S}/{name}");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{file}: {err}"));
        for document in serde_norway::Deserializer::from_str(&text) {
            let value = Value::deserialize(document).unwrap_or_else(|err| panic!("{file}: {err}"));
            if !value.is_null() {
                documents.push((file.clone(), value));
            }
        }
    }
    documents
}

/// The documents of one kind, with their files.
fn of_kind<'a>(
    documents: &'a [(String, Value)],
    kind: &'a str,
) -> impl Iterator<Item = (&'a str, &'a Value)> {
    documents
        .iter()
        .filter(move |(_, document)| document["kind"].as_str() == Some(kind))
        .map(|(file, document)| (file.as_str(), document))
}

/// A YAML sequence's items; none when it is absent.
fn items(value: &Value) -> &[Value] {
    value.as_sequence().map(Vec::as_slice).unwrap_or_default()
}

/// A YAML value as it reads in the file, for messages.
fn show(value: &Value) -> String {
    serde_norway::to_string(value)
        .map_or_else(|_| format!("{value:?}"), |s| s.trim_end().to_owned())
}

/// One container of a Deployment, and how keybust is started in it.
struct Container<'a> {
    deployment: &'a Value,
    spec: &'a Value,
    launch: Launch,
}

impl Container<'_> {
    /// The labels of the pods its Deployment makes.
    fn pod_labels(&self) -> &Value {
        &self.deployment["spec"]["template"]["metadata"]["labels"]
    }

    /// The container port a probe or a Service names: a number, or the
    /// name of one of the container's ports.
    fn port(&self, port: &Value) -> Option<u16> {
        let number = match port.as_str() {
            Some(name) => items(&self.spec["ports"])
                .iter()
                .find(|declared| declared["name"].as_str() == Some(name))?["containerPort"]
                .as_u64()?,
            None => port.as_u64()?,
        };
        u16::try_from(number).ok()
    }
}

/// The containers of every Deployment.
fn containers(documents: &[(String, Value)]) -> Vec<Container<'_>> {
    let containers: Vec<Container<'_>> = of_kind(documents, "Deployment")
        .flat_map(|(file, deployment)| {
            items(&deployment["spec"]["template"]["spec"]["containers"])
                .iter()
                .map(move |spec| Container {
                    deployment,
                    spec,
                    launch: container_launch(file, spec),
                })
        })
        .collect();
    assert!(
        !containers.is_empty(),
        "{K8S}: no Deployment with a container"
    );
    containers
}

/// How a container starts keybust: its command and args (after the
/// image's entrypoint), and its `env`.
fn container_launch(file: &str, spec: &Value) -> Launch {
    let name = spec["name"].as_str().unwrap_or("(unnamed)");
    let place = format!("{file}: container {name}");
    let args = items(&spec["command"])
        .iter()
        .chain(items(&spec["args"]))
        .map(|arg| {
            arg.as_str()
                .unwrap_or_else(|| panic!("{place}: argument {} is not a string", show(arg)))
                .to_owned()
        })
        .collect();
    let env = items(&spec["env"])
        .iter()
        .map(|var| {
            let name = var["name"]
                .as_str()
                .unwrap_or_else(|| panic!("{place}: env entry {} has no name", show(var)));
            (name.to_owned(), var["value"].as_str().map(str::to_owned))
        })
        .collect();
    Launch { place, args, env }
}

/// Whether `selector` (label: value pairs, all required) picks pods
/// labelled `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector.as_mapping().is_some_and(|wanted| {
        !wanted.is_empty()
            && wanted
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value))
    })
}

/// An image reference without its tag or digest:
/// `registry:5000/keybust:1.0` is `registry:5000/keybust`.
fn image_name(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(name, _)| name);
    let last = image.rfind('/').map_or(0, |slash| slash + 1);
    match image[last..].find(':') {
        Some(colon) => &image[..last + colon],
        None => image,
    }
}

/// Every flag a Deployment passes, every environment name it sets and
/// every setting its Secret holds is one `keybust serve --help` lists;
/// secrets come from the Secret, never from plain values; the Secret the
/// containers read is the one the manifests define.
#[test]
fn kubernetes_manifests_name_only_listed_settings() {
    let documents = manifests();
    let help = help();
    let mut problems = Vec::new();
    let containers = containers(&documents);
    let in_containers: usize = containers
        .iter()
        .map(|container| container.launch.check_names(&mut problems))
        .sum();
    assert!(
        in_containers >= 8,
        "{K8S}: only {in_containers} settings found in the Deployment's containers; the manifests or this test's reading of them changed"
    );

    let mut in_secrets = 0;
    let mut secrets = BTreeSet::new();
    for (file, secret) in of_kind(&documents, "Secret") {
        secrets.extend(secret["metadata"]["name"].as_str());
        for section in ["stringData", "data"] {
            let Some(entries) = secret[section].as_mapping() else {
                continue;
            };
            for key in entries
                .keys()
                .filter_map(Value::as_str)
                .filter(|key| is_env(key))
            {
                in_secrets += 1;
                if !help.envs.contains(key) {
                    problems.push(format!(
                        "{file}: Secret key {key} is not an environment twin in `keybust serve --help`"
                    ));
                }
            }
        }
    }
    assert!(
        in_secrets >= 3,
        "{K8S}: only {in_secrets} settings found in Secrets"
    );

    for container in &containers {
        for source in items(&container.spec["envFrom"]) {
            let reference = &source["secretRef"];
            if let Some(name) = reference["name"].as_str()
                && !secrets.contains(name)
                && reference["optional"].as_bool() != Some(true)
            {
                problems.push(format!(
                    "{}: envFrom names Secret {name}, which no manifest in {K8S} defines",
                    container.launch.place
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Probes reach the metrics listener, the one that answers them and that
/// the kubelet can reach (the admin listener stays on loopback), in the
/// scheme it speaks (HTTPS when TLS covers it), each on the path that fits
/// it: readiness on /readyz, so a draining or
/// unconfigured keybust leaves the Service; liveness and startup on
/// /healthz, so a backend outage does not restart every pod. The Service
/// reaches the public listener of the pods it selects, and the disruption
/// budget selects them too.
#[test]
fn kubernetes_probes_and_service_reach_the_right_listeners() {
    let documents = manifests();
    let containers = containers(&documents);
    let mut problems = Vec::new();

    let mut probes = 0;
    for container in &containers {
        let place = &container.launch.place;
        container.launch.reachable_port(LISTEN, &mut problems);
        let metrics = container
            .launch
            .reachable_port(METRICS_LISTEN, &mut problems);
        for (probe, path) in [
            ("startupProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("livenessProbe", "/healthz"),
        ] {
            let get = &container.spec[probe]["httpGet"];
            if get.is_null() {
                problems.push(format!("{place}: no {probe} with httpGet"));
                continue;
            }
            probes += 1;
            if get["path"].as_str() != Some(path) {
                problems.push(format!(
                    "{place}: {probe} asks for {}, not {path}",
                    show(&get["path"])
                ));
            }
            let scheme = get["scheme"].as_str().unwrap_or("HTTP");
            let speaks = if container.launch.speaks_tls("metrics") {
                "HTTPS"
            } else {
                "HTTP"
            };
            if scheme != speaks {
                problems.push(format!(
                    "{place}: {probe} asks over {scheme}; the metrics listener speaks {speaks}"
                ));
            }
            let port = container.port(&get["port"]);
            if port.is_none() || port != metrics {
                problems.push(format!(
                    "{place}: {probe} port {} is {port:?}, not the metrics listener's ({metrics:?}, from {})",
                    show(&get["port"]),
                    METRICS_LISTEN.env
                ));
            }
        }
    }
    assert!(probes >= 3, "{K8S}: only {probes} probes found");

    let mut service_ports = 0;
    for (file, service) in of_kind(&documents, "Service") {
        let selector = &service["spec"]["selector"];
        let backends: Vec<&Container<'_>> = containers
            .iter()
            .filter(|container| selects(selector, container.pod_labels()))
            .collect();
        if backends.is_empty() {
            problems.push(format!(
                "{file}: selector {} matches no Deployment's pods",
                show(selector)
            ));
        }
        for port in items(&service["spec"]["ports"]) {
            service_ports += 1;
            let target = match &port["targetPort"] {
                Value::Null => &port["port"],
                target => target,
            };
            for backend in &backends {
                let reached = backend.port(target);
                let public = backend.launch.address(LISTEN).map(|address| address.port());
                if reached.is_none() || reached != public {
                    problems.push(format!(
                        "{file}: targetPort {} is {reached:?} in {}, not the public listener's port {public:?} ({})",
                        show(target),
                        backend.launch.place,
                        LISTEN.env
                    ));
                }
            }
        }
    }
    assert!(service_ports >= 1, "{K8S}: no Service port found");

    for (file, budget) in of_kind(&documents, "PodDisruptionBudget") {
        let selector = &budget["spec"]["selector"]["matchLabels"];
        if !containers
            .iter()
            .any(|container| selects(selector, container.pod_labels()))
        {
            problems.push(format!(
                "{file}: selector {} matches no Deployment's pods",
                show(selector)
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// After SIGTERM the kubelet waits terminationGracePeriodSeconds, then
/// kills: the wait must outlast keybust's stop (the shutdown delay, then
/// the grace), or requests in flight are cut. The delay must not be zero:
/// it keeps keybust accepting while the endpoints and the proxies catch up
/// with the stop, the job a preStop sleep would otherwise do.
#[test]
fn kubernetes_grace_period_outlasts_the_stop() {
    let documents = manifests();
    let mut problems = Vec::new();
    for container in containers(&documents) {
        let launch = &container.launch;
        let period =
            &container.deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"];
        // Kubernetes' default when it is not set.
        let period = Duration::from_secs(period.as_u64().unwrap_or(30));
        let stop = launch.stop_time();
        if period <= stop {
            problems.push(format!(
                "{}: terminationGracePeriodSeconds ({period:?}) does not outlast {} + {} ({stop:?})",
                launch.place, SHUTDOWN_DELAY.env, SHUTDOWN_GRACE.env
            ));
        }
        if launch.duration(SHUTDOWN_DELAY).is_zero() {
            problems.push(format!(
                "{}: {} is zero: connections still routed to a stopping pod are refused",
                launch.place, SHUTDOWN_DELAY.env
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `kubectl apply -k deploy/k8s` applies every manifest beside the
/// kustomization and names no missing one, and its image override names
/// the image the Deployment runs (one that names another is silently left
/// unused).
#[test]
fn kustomization_lists_every_manifest() {
    let documents = manifests();
    let kustomizations: Vec<(&str, &Value)> = of_kind(&documents, "Kustomization").collect();
    let [(file, kustomization)] = kustomizations.as_slice() else {
        panic!(
            "{K8S}: {} Kustomizations, where one is expected",
            kustomizations.len()
        );
    };
    let listed: BTreeSet<String> = items(&kustomization["resources"])
        .iter()
        .filter_map(Value::as_str)
        .map(|resource| format!("{K8S}/{resource}"))
        .collect();
    let present: BTreeSet<String> = documents
        .iter()
        .filter(|(_, document)| document["kind"].as_str() != Some("Kustomization"))
        .map(|(file, _)| file.clone())
        .collect();
    assert!(present.len() >= 4, "{K8S}: only {present:?}");
    assert_eq!(
        listed, present,
        "{file}: `resources` must list exactly the manifests in {K8S}"
    );

    let images: BTreeSet<&str> = items(&kustomization["images"])
        .iter()
        .filter_map(|image| image["name"].as_str())
        .collect();
    for container in containers(&documents) {
        let image = container.spec["image"].as_str().unwrap_or_default();
        assert!(
            images.contains(image_name(image)),
            "{file}: no `images` entry for {}, the image of {}",
            image_name(image),
            container.launch.place
        );
    }
}

// ---------------------------------------------------------------------------
// systemd

/// A systemd unit file's settings, in order: continuation lines joined,
/// comments dropped. Sections are not told apart: keybust's units use each
/// key in one section only.
fn unit(file: &str) -> Vec<(String, String)> {
    let mut settings = Vec::new();
    let mut pending = String::new();
    for line in read(file).lines() {
        let line = line.trim();
        if line.starts_with(['#', ';']) || (pending.is_empty() && line.starts_with('[')) {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            pending.push_str(part);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let setting = std::mem::take(&mut pending);
        if setting.trim().is_empty() {
            continue;
        }
        let (key, value) = setting
            .split_once('=')
            .unwrap_or_else(|| panic!("{file}: {setting:?} is not KEY=VALUE"));
        settings.push((key.trim().to_owned(), value.trim().to_owned()));
    }
    settings
}

/// The values `key` is given in a unit, in order.
fn values<'a>(unit: &'a [(String, String)], key: &'a str) -> impl Iterator<Item = &'a str> {
    unit.iter()
        .filter(move |(name, _)| name == key)
        .map(|(_, value)| value.as_str())
}

/// The value `key` ends up with in a unit: its last.
fn value<'a>(unit: &'a [(String, String)], key: &'a str) -> Option<&'a str> {
    values(unit, key).last()
}

/// A systemd boolean that is on.
fn is_yes(value: &str) -> bool {
    matches!(value, "yes" | "true" | "on" | "1")
}

/// A systemd time span: bare seconds, or with units as keybust's own
/// durations take them (`45s`, `1min 30s`).
fn systemd_span(value: &str) -> Duration {
    value.parse().map(Duration::from_secs).unwrap_or_else(|_| {
        keybust::config::parse_duration(value)
            .unwrap_or_else(|err| panic!("{SERVICE}: time span {value:?}: {err}"))
    })
}

/// How keybust.service starts keybust: ExecStart's words after the binary,
/// and its Environment= assignments. (EnvironmentFile= is read at start,
/// where this test cannot see.)
fn service_launch(unit: &[(String, String)]) -> Launch {
    let exec = value(unit, "ExecStart").unwrap_or_else(|| panic!("{SERVICE}: no ExecStart="));
    let mut argv = words(exec).into_iter();
    let binary = argv.next().unwrap_or_default();
    assert!(
        binary
            .trim_start_matches(['-', '@', '+', '!', ':'])
            .ends_with("/keybust"),
        "{SERVICE}: ExecStart runs {binary:?}, not keybust"
    );
    let args: Vec<String> = argv.collect();
    assert_eq!(
        args.first().map(String::as_str),
        Some("serve"),
        "{SERVICE}: ExecStart must run `keybust serve`"
    );
    let env = values(unit, "Environment")
        .flat_map(words)
        .map(|assignment| {
            let (name, value) = assignment
                .split_once('=')
                .unwrap_or_else(|| panic!("{SERVICE}: Environment={assignment} is not NAME=VALUE"));
            (name.to_owned(), Some(value.to_owned()))
        })
        .collect();
    Launch {
        place: SERVICE.to_owned(),
        args,
        env,
    }
}

/// keybust.service starts keybust as keybust expects: notify-type
/// (keybust says READY=1), with only settings `--help` lists and no secret
/// in its plain Environment= (`systemctl show` prints those), as a user
/// other than root, and without MemoryDenyWriteExecute=, which would stop
/// wasmtime making the code it compiles executable.
#[test]
fn systemd_service_runs_keybust_as_it_expects() {
    let service = unit(SERVICE);
    let launch = service_launch(&service);
    let mut problems = Vec::new();

    let checked = launch.check_names(&mut problems);
    assert!(
        checked >= 5,
        "{SERVICE}: only {checked} settings found in ExecStart= and Environment="
    );
    if value(&service, "Type") != Some("notify") {
        problems.push(format!("{SERVICE}: Type= is not notify"));
    }
    if value(&service, "MemoryDenyWriteExecute").is_some_and(is_yes) {
        problems.push(format!(
            "{SERVICE}: MemoryDenyWriteExecute= is on: wasmtime cannot map the code it compiles"
        ));
    }
    let dynamic = value(&service, "DynamicUser").is_some_and(is_yes);
    if !dynamic && matches!(value(&service, "User"), None | Some("root" | "0")) {
        problems.push(format!("{SERVICE}: keybust would run as root"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// keybust takes the sockets keybust.socket passes by position (public,
/// admin, metrics): each ListenStream= must be on the port keybust.service
/// configures for that listener, which it binds itself when it runs without
/// the socket. And systemd must wait longer than keybust's stop before it
/// kills it.
#[test]
fn systemd_socket_and_stop_timeout_agree_with_the_service() {
    let service = unit(SERVICE);
    let launch = service_launch(&service);
    let socket = unit(SOCKET);

    let streams: Vec<&str> = values(&socket, "ListenStream").collect();
    assert!(!streams.is_empty(), "{SOCKET}: no ListenStream=");
    assert!(
        streams.len() <= PASSED_SOCKETS.len(),
        "{SOCKET}: {} ListenStream= lines; keybust takes at most {} (public, admin, metrics)",
        streams.len(),
        PASSED_SOCKETS.len()
    );
    for (stream, listener) in streams.iter().zip(PASSED_SOCKETS) {
        let port = stream
            .rsplit(':')
            .next()
            .and_then(|port| port.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("{SOCKET}: ListenStream={stream} is not a TCP port"));
        let configured = launch.address(listener).map(|address| address.port());
        assert_eq!(
            Some(port),
            configured,
            "{SOCKET}: ListenStream={stream} is passed as {}'s listener; {SERVICE} configures port {configured:?} for it",
            listener.env
        );
    }

    // systemd's default when it is not set.
    let timeout = value(&service, "TimeoutStopSec").map_or(Duration::from_secs(90), systemd_span);
    let stop = launch.stop_time();
    assert!(
        timeout > stop,
        "{SERVICE}: TimeoutStopSec= ({timeout:?}) does not outlast {} + {} ({stop:?})",
        SHUTDOWN_DELAY.env,
        SHUTDOWN_GRACE.env
    );
}

// ---------------------------------------------------------------------------
// Dockerfile

/// One Dockerfile instruction: its keyword, upper case, and the rest.
struct Instruction {
    keyword: String,
    arguments: String,
}

/// The Dockerfile's stages, each its instructions from its FROM on:
/// continuation lines joined, comments and parser directives dropped.
fn dockerfile_stages() -> Vec<Vec<Instruction>> {
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    let mut pending = String::new();
    for line in read(DOCKERFILE).lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            pending.push_str(part);
            pending.push(' ');
            continue;
        }
        if line.is_empty() && !pending.is_empty() {
            continue;
        }
        pending.push_str(line);
        let instruction = std::mem::take(&mut pending);
        let instruction = instruction.trim();
        if instruction.is_empty() {
            continue;
        }
        let (keyword, arguments) = instruction
            .split_once(char::is_whitespace)
            .unwrap_or((instruction, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" || stages.is_empty() {
            stages.push(Vec::new());
        }
        stages.last_mut().expect("a stage").push(Instruction {
            keyword,
            arguments: arguments.trim().to_owned(),
        });
    }
    stages
}

/// The instructions of a stage with one keyword.
fn instructions<'a>(
    stage: &'a [Instruction],
    keyword: &'a str,
) -> impl Iterator<Item = &'a Instruction> {
    stage
        .iter()
        .filter(move |instruction| instruction.keyword == keyword)
}

/// The variables an ENV or ARG instruction sets, with their values (none
/// for an ARG without a default).
fn assignments(instruction: &Instruction) -> Vec<(String, Option<String>)> {
    let words = words(&instruction.arguments);
    if instruction.keyword == "ENV" && words.len() >= 2 && !words[0].contains('=') {
        // The legacy form, `ENV NAME value...`.
        return vec![(words[0].clone(), Some(words[1..].join(" ")))];
    }
    words
        .into_iter()
        .map(|word| match word.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (word, None),
        })
        .collect()
}

/// An ENTRYPOINT, CMD or VOLUME's words: its JSON array, or its shell form
/// split at whitespace.
fn exec_form(arguments: &str) -> Vec<String> {
    serde_json::from_str::<Vec<String>>(arguments).unwrap_or_else(|_| words(arguments))
}

/// How the image starts keybust: ENTRYPOINT and CMD after the binary, and
/// the ENV names that are keybust's (`KEYBUST_*`, or a twin `--help` lists).
fn image_launch(runtime: &[Instruction]) -> Launch {
    let argv: Vec<String> = ["ENTRYPOINT", "CMD"]
        .into_iter()
        .filter_map(|keyword| instructions(runtime, keyword).last())
        .flat_map(|instruction| exec_form(&instruction.arguments))
        .collect();
    let [binary, args @ ..] = argv.as_slice() else {
        panic!("{DOCKERFILE}: the runtime stage has no ENTRYPOINT or CMD");
    };
    assert!(
        binary == "keybust" || binary.ends_with("/keybust"),
        "{DOCKERFILE}: the image runs {binary:?}, not keybust"
    );
    assert_eq!(
        args.first().map(String::as_str),
        Some("serve"),
        "{DOCKERFILE}: the image must run `keybust serve` by default"
    );
    let help = help();
    let env = instructions(runtime, "ENV")
        .flat_map(assignments)
        .filter(|(name, _)| name.starts_with("KEYBUST_") || help.envs.contains(name))
        .collect();
    Launch {
        place: format!("{DOCKERFILE}: runtime stage"),
        args: args.to_vec(),
        env,
    }
}

/// Build arguments (and builder ENV) named `KEYBUST_*` are build-time
/// settings: host/build.rs must read them, and rerun when they change, as
/// the builder's target directory is cached across builds.
/// `KEYBUST_GUEST_WASM`, the prebuilt component, must be one.
#[test]
fn dockerfile_build_arguments_reach_the_build_script() {
    let stages = dockerfile_stages();
    let (_, builders) = stages
        .split_last()
        .unwrap_or_else(|| panic!("{DOCKERFILE}: no FROM"));
    assert!(
        !builders.is_empty(),
        "{DOCKERFILE}: one stage; the build belongs in a stage of its own"
    );
    let build_script = read(BUILD_SCRIPT);
    let mut problems = Vec::new();
    let mut build_time = BTreeSet::new();
    for instruction in builders
        .iter()
        .flatten()
        .filter(|instruction| matches!(instruction.keyword.as_str(), "ARG" | "ENV"))
    {
        for (name, _) in assignments(instruction) {
            if !name.starts_with("KEYBUST_") {
                continue;
            }
            let reads = [format!("var(\"{name}\")"), format!("var_os(\"{name}\")")]
                .iter()
                .any(|call| build_script.contains(call.as_str()));
            let reruns = build_script.contains(&format!("rerun-if-env-changed={name}"));
            if !reads || !reruns {
                problems.push(format!(
                    "{DOCKERFILE}: {} {name} is a build-time setting, but {BUILD_SCRIPT} does not read it and rerun when it changes",
                    instruction.keyword
                ));
            }
            build_time.insert(name);
        }
    }
    assert!(
        build_time.contains("KEYBUST_GUEST_WASM"),
        "{DOCKERFILE}: no ARG KEYBUST_GUEST_WASM for a prebuilt component (found {build_time:?})"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The image runs `keybust serve` with only settings `--help` lists and no
/// secret baked in; as a numeric user other than root (Kubernetes'
/// runAsNonRoot can only check a number); with the CA certificates
/// outbound TLS trusts; with its public and metrics listeners on every
/// address and exposed; with its state and cache directories on volumes.
#[test]
fn dockerfile_runtime_stage_runs_keybust_as_it_expects() {
    let stages = dockerfile_stages();
    let runtime = stages
        .last()
        .unwrap_or_else(|| panic!("{DOCKERFILE}: no FROM"));
    let launch = image_launch(runtime);
    let mut problems = Vec::new();

    let checked = launch.check_names(&mut problems);
    assert!(
        checked >= 4,
        "{DOCKERFILE}: only {checked} keybust settings found in the runtime stage"
    );

    match instructions(runtime, "USER").last() {
        None => problems.push(format!("{DOCKERFILE}: no USER: keybust would run as root")),
        Some(user) => {
            let uid = user.arguments.split(':').next().unwrap_or_default();
            if !uid.parse::<u32>().is_ok_and(|uid| uid != 0) {
                problems.push(format!(
                    "{DOCKERFILE}: USER {} is not a numeric user other than root",
                    user.arguments
                ));
            }
        }
    }

    let installs_certificates = instructions(runtime, "RUN")
        .any(|run| run.arguments.contains("install") && run.arguments.contains("ca-certificates"));
    if !installs_certificates {
        problems.push(format!(
            "{DOCKERFILE}: the runtime stage does not install ca-certificates, which outbound TLS trusts"
        ));
    }

    let exposed: BTreeSet<u16> = instructions(runtime, "EXPOSE")
        .flat_map(|expose| words(&expose.arguments))
        .filter_map(|port| port.split('/').next()?.parse().ok())
        .collect();
    for listener in [LISTEN, METRICS_LISTEN] {
        if let Some(port) = launch.reachable_port(listener, &mut problems)
            && !exposed.contains(&port)
        {
            problems.push(format!(
                "{DOCKERFILE}: port {port} of {} is not exposed (EXPOSE {exposed:?})",
                listener.env
            ));
        }
    }

    let volumes: BTreeSet<String> = instructions(runtime, "VOLUME")
        .flat_map(|volume| exec_form(&volume.arguments))
        .collect();
    for directory in [STATE_DIR, CACHE_DIR] {
        match launch.get(directory) {
            Some(path) if volumes.contains(&path) => {}
            path => problems.push(format!(
                "{DOCKERFILE}: {} is {path:?}, not one of the VOLUMEs {volumes:?}",
                directory.env
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
