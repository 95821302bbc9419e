//! Readers for the deployment files under `deploy/`, as systemd, Docker
//! and Kubernetes read them: unit files' sections and values, a
//! Dockerfile's stages and instructions, the manifests' containers, and the
//! command line each one launches keybust with. `tests/all/deploy.rs` holds
//! them against keybust and against each other.

use super::help::{listed, serve_help};
use serde::Deserialize;
use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

pub const K8S: &str = "deploy/k8s";

pub const SERVICE: &str = "deploy/systemd/keybust.service";

pub const SOCKET: &str = "deploy/systemd/keybust.socket";

pub const DOCKERFILE: &str = "deploy/Dockerfile";

pub const BUILD_SCRIPT: &str = "host/build.rs";

/// A setting, by its flag and its environment twin.
#[derive(Clone, Copy)]
pub struct Setting {
    pub flag: &'static str,
    pub env: &'static str,
}

pub const LISTEN: Setting = Setting {
    flag: "--listen",
    env: "KEYBUST_LISTEN",
};

pub const ADMIN_LISTEN: Setting = Setting {
    flag: "--admin-listen",
    env: "KEYBUST_ADMIN_LISTEN",
};

pub const METRICS_LISTEN: Setting = Setting {
    flag: "--metrics-listen",
    env: "KEYBUST_METRICS_LISTEN",
};

pub const SHUTDOWN_DELAY: Setting = Setting {
    flag: "--shutdown-delay",
    env: "KEYBUST_SHUTDOWN_DELAY",
};

pub const SHUTDOWN_GRACE: Setting = Setting {
    flag: "--shutdown-grace",
    env: "KEYBUST_SHUTDOWN_GRACE",
};

pub const STATE_DIR: Setting = Setting {
    flag: "--state-dir",
    env: "KEYBUST_STATE_DIR",
};

pub const CACHE_DIR: Setting = Setting {
    flag: "--component-cache-dir",
    env: "KEYBUST_COMPONENT_CACHE_DIR",
};

pub const TLS_CERT: Setting = Setting {
    flag: "--tls-cert",
    env: "KEYBUST_TLS_CERT",
};

pub const TLS_LISTENERS: Setting = Setting {
    flag: "--tls-listeners",
    env: "KEYBUST_TLS_LISTENERS",
};

/// The listeners in the order keybust takes the sockets systemd passes
/// (`LISTEN_FDS`): fd 3 is the public one, then the admin one, then the
/// metrics one.
pub const PASSED_SOCKETS: [Setting; 3] = [LISTEN, ADMIN_LISTEN, METRICS_LISTEN];

/// What `keybust serve --help` lists, read once per test binary.
pub struct Help {
    pub flags: BTreeSet<String>,
    pub envs: BTreeSet<String>,
    /// The twins whose values `--help` hides (`[env: NAME]`, no `=`): the
    /// secrets, which belong in a Secret or an environment file, never in
    /// a plain value a deployment file shows.
    pub secrets: BTreeSet<String>,
    pub text: String,
}

pub fn help() -> &'static Help {
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
    pub fn default_of(&self, flag: &str) -> Option<&str> {
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
pub struct Launch {
    /// The file, and where in it, for messages.
    pub place: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, Option<String>>,
}

impl Launch {
    /// A setting's value: its flag (which wins, as on the command line),
    /// else its environment twin, else the default `--help` states.
    pub fn get(&self, setting: Setting) -> Option<String> {
        flag_value(&self.args, setting.flag)
            .or_else(|| self.env.get(setting.env).cloned().flatten())
            .or_else(|| help().default_of(setting.flag).map(str::to_owned))
    }

    /// A listener's address, parsed as keybust parses it; none when the
    /// listener is off.
    pub fn address(&self, setting: Setting) -> Option<SocketAddr> {
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
    pub fn duration(&self, setting: Setting) -> Duration {
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
    pub fn stop_time(&self) -> Duration {
        self.duration(SHUTDOWN_DELAY) + self.duration(SHUTDOWN_GRACE)
    }

    /// Whether `listener` (`public`, `admin` or `metrics`) speaks TLS: a
    /// certificate is set, and the listener is among the TLS listeners
    /// (the public one alone by default).
    pub fn speaks_tls(&self, listener: &str) -> bool {
        self.get(TLS_CERT).is_some()
            && self
                .get(TLS_LISTENERS)
                .unwrap_or_else(|| "public".to_owned())
                .split(',')
                .any(|name| name.trim() == listener)
    }

    /// The port of a listener others must reach (a load balancer, the
    /// kubelet, another container): it must be set, and not on loopback.
    pub fn reachable_port(&self, setting: Setting, problems: &mut Vec<String>) -> Option<u16> {
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
    pub fn check_names(&self, problems: &mut Vec<String>) -> usize {
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
pub fn flag_value(args: &[String], flag: &str) -> Option<String> {
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
pub fn words(line: &str) -> Vec<String> {
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
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ lives in the workspace")
}

/// A file of the workspace, by its path from the root.
pub fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|err| panic!("{path}: {err}"))
}

// ---------------------------------------------------------------------------
// Kubernetes

/// Every YAML document under `deploy/k8s`, with the file it is in.
pub fn manifests() -> Vec<(String, Value)> {
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
pub fn of_kind<'a>(
    documents: &'a [(String, Value)],
    kind: &'a str,
) -> impl Iterator<Item = (&'a str, &'a Value)> {
    documents
        .iter()
        .filter(move |(_, document)| document["kind"].as_str() == Some(kind))
        .map(|(file, document)| (file.as_str(), document))
}

/// A YAML sequence's items; none when it is absent.
pub fn items(value: &Value) -> &[Value] {
    value.as_sequence().map(Vec::as_slice).unwrap_or_default()
}

/// A YAML value as it reads in the file, for messages.
pub fn show(value: &Value) -> String {
    serde_norway::to_string(value)
        .map_or_else(|_| format!("{value:?}"), |s| s.trim_end().to_owned())
}

/// One container of a Deployment, and how keybust is started in it.
pub struct Container<'a> {
    pub deployment: &'a Value,
    pub spec: &'a Value,
    pub launch: Launch,
}

impl Container<'_> {
    /// The labels of the pods its Deployment makes.
    pub fn pod_labels(&self) -> &Value {
        &self.deployment["spec"]["template"]["metadata"]["labels"]
    }

    /// The container port a probe or a Service names: a number, or the
    /// name of one of the container's ports.
    pub fn port(&self, port: &Value) -> Option<u16> {
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
pub fn containers(documents: &[(String, Value)]) -> Vec<Container<'_>> {
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
pub fn container_launch(file: &str, spec: &Value) -> Launch {
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
pub fn selects(selector: &Value, labels: &Value) -> bool {
    selector.as_mapping().is_some_and(|wanted| {
        !wanted.is_empty()
            && wanted
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value))
    })
}

/// An image reference without its tag or digest:
/// `registry:5000/keybust:1.0` is `registry:5000/keybust`.
pub fn image_name(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(name, _)| name);
    let last = image.rfind('/').map_or(0, |slash| slash + 1);
    match image[last..].find(':') {
        Some(colon) => &image[..last + colon],
        None => image,
    }
}

/// A systemd unit file's settings, in order: continuation lines joined,
/// comments dropped. Sections are not told apart: keybust's units use each
/// key in one section only.
pub fn unit(file: &str) -> Vec<(String, String)> {
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
pub fn values<'a>(unit: &'a [(String, String)], key: &'a str) -> impl Iterator<Item = &'a str> {
    unit.iter()
        .filter(move |(name, _)| name == key)
        .map(|(_, value)| value.as_str())
}

/// The value `key` ends up with in a unit: its last.
pub fn value<'a>(unit: &'a [(String, String)], key: &'a str) -> Option<&'a str> {
    values(unit, key).last()
}

/// A systemd boolean that is on.
pub fn is_yes(value: &str) -> bool {
    matches!(value, "yes" | "true" | "on" | "1")
}

/// A systemd time span: bare seconds, or with units as keybust's own
/// durations take them (`45s`, `1min 30s`).
pub fn systemd_span(value: &str) -> Duration {
    value.parse().map(Duration::from_secs).unwrap_or_else(|_| {
        keybust::config::parse_duration(value)
            .unwrap_or_else(|err| panic!("{SERVICE}: time span {value:?}: {err}"))
    })
}

/// How keybust.service starts keybust: ExecStart's words after the binary,
/// and its Environment= assignments. (EnvironmentFile= is read at start,
/// where this test cannot see.)
pub fn service_launch(unit: &[(String, String)]) -> Launch {
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

/// One Dockerfile instruction: its keyword, upper case, and the rest.
pub struct Instruction {
    pub keyword: String,
    pub arguments: String,
}

/// The Dockerfile's stages, each its instructions from its FROM on:
/// continuation lines joined, comments and parser directives dropped.
pub fn dockerfile_stages() -> Vec<Vec<Instruction>> {
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
pub fn instructions<'a>(
    stage: &'a [Instruction],
    keyword: &'a str,
) -> impl Iterator<Item = &'a Instruction> {
    stage
        .iter()
        .filter(move |instruction| instruction.keyword == keyword)
}

/// The variables an ENV or ARG instruction sets, with their values (none
/// for an ARG without a default).
pub fn assignments(instruction: &Instruction) -> Vec<(String, Option<String>)> {
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
pub fn exec_form(arguments: &str) -> Vec<String> {
    serde_json::from_str::<Vec<String>>(arguments).unwrap_or_else(|_| words(arguments))
}

/// How the image starts keybust: ENTRYPOINT and CMD after the binary, and
/// the ENV names that are keybust's (`KEYBUST_*`, or a twin `--help` lists).
pub fn image_launch(runtime: &[Instruction]) -> Launch {
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
