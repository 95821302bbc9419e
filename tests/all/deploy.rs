//! The deployment files under `deploy/` (the systemd units, the Dockerfile,
//! the Kubernetes manifests) are configuration keybust never reads, so
//! nothing else notices when they drift from it. These tests read them as
//! systemd, Docker and Kubernetes would, and check that they name only
//! settings `keybust serve --help` lists, and that they agree with keybust
//! and with each other where they meet: the ports probes and Services
//! reach, the time a stop takes, who keybust runs as.

use crate::support::deploy_files::*;
use crate::support::help::is_env;
use serde_norway::Value;
use std::collections::BTreeSet;
use std::time::Duration;

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

/// The alert rules under `deploy/prometheus/` load in Prometheus's own
/// checker and pass their unit tests (`alerts.test.yml`: each alert fires
/// on the series that should fire it, and stays quiet on a healthy
/// instance), and the rules and the Grafana dashboard name only metrics a
/// live keybust exports: a renamed metric would leave an alert that can
/// never fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_rules_pass_promtool_and_name_only_exported_metrics() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts.test.yml"],
    ] {
        let output = std::process::Command::new(crate::support::promtool::promtool())
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dashboard.json")).unwrap())
            .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut queries = vec![rules];
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{panel}");
        queries.extend(
            targets
                .iter()
                .map(|target| target["expr"].as_str().unwrap().to_owned()),
        );
    }
    let named: BTreeSet<String> = queries
        .iter()
        .flat_map(|query| {
            query
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("keybust_") || word.starts_with("process_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(named.len() >= 12, "{named:?}");

    // A live keybust with every backend, so every metric has its series.
    let stack = crate::support::Stack::start(crate::support::Backend::Redis).await;
    stack
        .invalidate(crate::support::hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);
    let metrics = stack.metrics().await;
    // Sample names, and the families declared.
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter_map(|line| match line.strip_prefix("# TYPE ") {
            Some(declared) => declared.split(' ').next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        })
        .collect();
    // Series only while a candidate waits; its family is written only
    // with a series.
    const ONLY_WITH_A_CANDIDATE: &str = "keybust_rollout_stage";
    let missing: Vec<&String> = named
        .iter()
        .filter(|name| !exported.contains(name.as_str()) && *name != ONLY_WITH_A_CANDIDATE)
        .collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n{metrics}");
}

/// The image says what it is (OCI labels a registry and a scanner read:
/// title, version, revision and licence, agreeing with Cargo.toml), and
/// is built with the toolchain `rust-toolchain.toml` pins, not a newer
/// patch release a floating tag would bring.
#[test]
fn dockerfile_labels_and_toolchain_agree_with_the_workspace() {
    let stages = dockerfile_stages();
    let from = |stage: &Vec<Instruction>| {
        stage
            .iter()
            .find(|instruction| instruction.keyword == "FROM")
            .map(|instruction| instruction.arguments.clone())
            .unwrap_or_default()
    };
    let toolchain = read("rust-toolchain.toml");
    let channel = toolchain
        .lines()
        .find_map(|line| line.trim().strip_prefix("channel = "))
        .map(|value| value.trim_matches('"').to_owned())
        .expect("a channel in rust-toolchain.toml");
    let builder = from(&stages[0]);
    assert!(
        builder.starts_with(&format!("rust:{channel}-")),
        "{DOCKERFILE}: the build stage is FROM {builder}, not rust:{channel}-…"
    );

    let workspace = read("Cargo.toml");
    let field = |name: &str| {
        workspace
            .lines()
            .find_map(|line| line.trim().strip_prefix(&format!("{name} = ")))
            .map(|value| value.trim_matches('"').to_owned())
            .unwrap_or_else(|| panic!("no {name} in Cargo.toml"))
    };
    let runtime = stages.last().unwrap();
    let labels: String = runtime
        .iter()
        .filter(|instruction| instruction.keyword == "LABEL")
        .map(|instruction| instruction.arguments.clone())
        .collect::<Vec<_>>()
        .join(" ");
    for (key, value) in [
        ("org.opencontainers.image.title", "keybust".to_owned()),
        ("org.opencontainers.image.version", field("version")),
        ("org.opencontainers.image.licenses", field("license")),
        (
            "org.opencontainers.image.revision",
            "${KEYBUST_GIT_SHA}".to_owned(),
        ),
    ] {
        assert!(
            labels.contains(&format!("{key}=\"{value}\"")),
            "{DOCKERFILE}: no {key}=\"{value}\" in the runtime stage's labels: {labels}"
        );
    }
}
