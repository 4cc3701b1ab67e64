//! The deployment files agree with each other: the Kubernetes peer list has exactly `replicas` entries in ordinal
//! order and names the StatefulSet's pods behind its headless Service in the kustomize namespace, and
//! `DMUTEX_BOOTSTRAP_EXPECT` is that count; `scripts/k8s-scale.sh` keeps that true; the compose service can be
//! scaled (no fixed names or host ports); every OTLP endpoint is paired with the protocol its port speaks (the
//! node's default protocol included); the image names agree (compose and the build script share
//! `DMUTEX_IMAGE`, Kubernetes pins the crate version); both pass `DMUTEX_ALGORITHMS`, every name in it is an
//! algorithm, and it includes `DMUTEX_ALGORITHM`.
//!
//! Rolling updates: the environment each deployment gives a node loads as a valid configuration (the node's
//! own parser), and the grace period before SIGKILL (`terminationGracePeriodSeconds`, `stop_grace_period`)
//! covers that configuration's graceful stop (shutdown grace + a leave + margin, at least 10 s); the pods have
//! readiness on `/readyz` and liveness on `/healthz`; a PodDisruptionBudget of one selects them; pods start in
//! parallel (bootstrap needs all of them). `check_k8s_catches_broken_manifests` breaks each of those in a copy
//! and asserts the check fails.
//!
//! Schema validation is `scripts/validate-k8s.sh`; this test checks what a schema cannot.

use dmutex::algo::Algorithm;
use dmutex::config::{ConfigSources, NodeConfig};
use dmutex::obs::telemetry::OtlpProtocol;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every document of a YAML file.
fn load(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The one document of `kind` named `name` among the files of a kustomization directory.
fn find<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn str_of<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str().unwrap_or_else(|| panic!("{what} is not a string: {y:?}"))
}

/// The kustomization's namespace and every document of its resources.
fn kustomization(dir: &Path) -> (String, Vec<Yaml>) {
    let k = load(&dir.join("kustomization.yaml")).remove(0);
    let namespace = str_of(&k["namespace"], "namespace").to_string();
    let resources = k["resources"].as_vec().expect("resources");
    let docs = resources.iter().flat_map(|r| load(&dir.join(str_of(r, "resource")))).collect();
    (namespace, docs)
}

/// The protocol an OTLP endpoint's port speaks by convention (4317 gRPC, 4318 HTTP) must be the one the node
/// uses: the configured protocol, else the node's default.
fn check_otlp_pair(what: &str, endpoint: &str, protocol: Option<&str>) {
    let protocol = protocol.unwrap_or(OtlpProtocol::DEFAULT.name());
    let authority = endpoint.split("://").nth(1).unwrap_or(endpoint);
    let port = authority.split('/').next().and_then(|hp| hp.rsplit_once(':')).map(|(_, p)| p);
    let expected = match port {
        Some("4317") => "grpc",
        Some("4318") => "http/protobuf",
        other => panic!("{what}: {endpoint}: port {other:?} is neither 4317 (gRPC) nor 4318 (HTTP)"),
    };
    assert_eq!(protocol, expected, "{what}: {endpoint} needs OTEL_EXPORTER_OTLP_PROTOCOL={expected}");
}

/// The shortest grace period before SIGKILL accepted whatever the configuration says.
const MIN_GRACE: Duration = Duration::from_secs(10);

/// The node configuration a deployment's environment gives (`DMUTEX_*` only), loaded by the node's own parser.
fn node_config(what: &str, env: BTreeMap<String, String>, host_name: &str) -> NodeConfig {
    let env = env.into_iter().filter(|(k, _)| k.starts_with("DMUTEX_")).collect();
    let sources = ConfigSources { env, host_name: Some(host_name.to_string()), ..ConfigSources::default() };
    NodeConfig::load(&sources).unwrap_or_else(|e| panic!("{what}: not a valid node configuration: {e}"))
}

/// A grace period before SIGKILL must cover the node's graceful stop (and never be below [`MIN_GRACE`]).
fn check_grace(what: &str, grace: Duration, cfg: &NodeConfig) {
    let needed = cfg.graceful_stop_bound().max(MIN_GRACE);
    assert!(
        grace >= needed,
        "{what}: a grace period of {grace:?} is shorter than a graceful stop ({needed:?}: shutdown grace {:?} + \
         view change {:?} + margin)",
        cfg.shutdown_grace,
        cfg.view_change_bound()
    );
}

/// A compose duration: `15s`, `1m30s`, `500ms`.
fn compose_duration(text: &str) -> Duration {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let n: u64 = rest[..digits].parse().unwrap_or_else(|_| panic!("duration {text:?}"));
        rest = &rest[digits..];
        let unit = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        total += match &rest[..unit] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(60 * n),
            "h" => Duration::from_secs(3600 * n),
            other => panic!("duration {text:?}: unit {other:?}"),
        };
        rest = &rest[unit..];
    }
    total
}

/// The default of a compose `${VAR:-default}` value, or the value itself.
fn compose_default(value: &str) -> &str {
    value.split_once(":-").map_or(value, |(_, d)| d.strip_suffix('}').unwrap_or(d))
}

/// Checks the whole k8s directory and returns the replica count.
fn check_k8s(dir: &Path) -> usize {
    let (ns, docs) = kustomization(dir);
    let sts = docs.iter().find(|d| d["kind"].as_str() == Some("StatefulSet")).expect("a StatefulSet");
    let sts_name = str_of(&sts["metadata"]["name"], "StatefulSet name");
    let spec = &sts["spec"];
    let replicas = usize::try_from(spec["replicas"].as_i64().expect("replicas")).expect("replicas >= 0");
    let service_name = str_of(&spec["serviceName"], "serviceName");

    let pod = &spec["template"]["spec"];
    let container = &pod["containers"][0];
    let port = |name: &str| {
        container["ports"]
            .as_vec()
            .expect("ports")
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_i64())
            .unwrap_or_else(|| panic!("no container port {name}"))
    };
    let peer_port = port("peer");
    assert_eq!(port("http"), 8080);

    // The ConfigMap the pods read their peers from.
    let cm_name = container["envFrom"]
        .as_vec()
        .expect("envFrom")
        .iter()
        .find_map(|e| e["configMapRef"]["name"].as_str())
        .expect("envFrom configMapRef");
    let data = &find(&docs, "ConfigMap", cm_name)["data"];
    let peers: Vec<&str> = str_of(&data["DMUTEX_PEERS"], "DMUTEX_PEERS").split(',').collect();
    assert_eq!(peers.len(), replicas, "DMUTEX_PEERS must have one entry per replica");
    for (i, peer) in peers.iter().enumerate() {
        // Entry i is pod ordinal i, which is node id i (the node reads the ordinal from its host name).
        assert_eq!(*peer, format!("{sts_name}-{i}.{service_name}.{ns}.svc.cluster.local:{peer_port}"));
    }
    let expect = str_of(&data["DMUTEX_BOOTSTRAP_EXPECT"], "DMUTEX_BOOTSTRAP_EXPECT");
    assert_eq!(expect, replicas.to_string(), "DMUTEX_BOOTSTRAP_EXPECT is the replica count");
    assert!(
        data["DMUTEX_CLUSTER_SIZE"].is_badvalue(),
        "one name for the bootstrap size: DMUTEX_BOOTSTRAP_EXPECT"
    );
    // The bootstrap needs every node: pods must not wait for each other to be ready before they start.
    assert_eq!(spec["podManagementPolicy"].as_str(), Some("Parallel"), "podManagementPolicy");

    // The headless Service behind the names: resolvable before readiness, selecting these pods.
    let headless = &find(&docs, "Service", service_name)["spec"];
    assert_eq!(headless["clusterIP"].as_str(), Some("None"));
    assert_eq!(headless["publishNotReadyAddresses"].as_bool(), Some(true));
    let labels = &spec["template"]["metadata"]["labels"];
    for (k, v) in headless["selector"].as_hash().expect("selector") {
        assert_eq!(&labels[str_of(k, "label")], v, "Service selector must match the pod labels");
    }
    for (k, v) in spec["selector"]["matchLabels"].as_hash().expect("matchLabels") {
        assert_eq!(&labels[str_of(k, "label")], v, "StatefulSet selector must match the pod labels");
    }
    assert!(
        headless["ports"].as_vec().expect("ports").iter().any(|p| p["port"].as_i64() == Some(peer_port)),
        "the headless Service must carry the peer port"
    );

    // The client Service and the disruption budget.
    let client = &find(&docs, "Service", sts_name)["spec"];
    assert_eq!(client["ports"][0]["port"].as_i64(), Some(8080));
    let pdb = docs.iter().find(|d| d["kind"].as_str() == Some("PodDisruptionBudget")).expect("a PDB");
    assert_eq!(pdb["spec"]["maxUnavailable"].as_i64(), Some(1), "PDB maxUnavailable");
    let pdb_selector = pdb["spec"]["selector"]["matchLabels"].as_hash().expect("PDB matchLabels");
    assert!(!pdb_selector.is_empty(), "the PDB selects pods");
    for (k, v) in pdb_selector {
        assert_eq!(&labels[str_of(k, "label")], v, "the PDB selector must match the pod labels");
    }

    // Hardening a schema does not require.
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    // Rolling updates: readiness gates each step (a node is ready only once it serves), liveness never asks
    // about peers (a restart because a peer is down would spread the failure), both on the HTTP port.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe} path");
        assert_eq!(get["port"].as_str(), Some("http"), "{probe} port");
    }

    // Traces: the collector's port and the protocol agree (a gRPC exporter talking to 4318 sends nothing).
    let env = container["env"].as_vec().expect("env");
    let var =
        |name: &str| env.iter().find(|e| e["name"].as_str() == Some(name)).and_then(|e| e["value"].as_str());
    if let Some(endpoint) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        check_otlp_pair("k8s/statefulset.yaml", endpoint, var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    }

    // What pod 0 is given (the ConfigMap, then the container's own values) is a valid node configuration, and
    // the grace period before SIGKILL covers its graceful stop.
    let mut node_env: BTreeMap<String, String> = data
        .as_hash()
        .expect("ConfigMap data")
        .iter()
        .map(|(k, v)| (str_of(k, "ConfigMap key").to_string(), str_of(v, "ConfigMap value").to_string()))
        .collect();
    for e in env {
        if let (Some(name), Some(value)) = (e["name"].as_str(), e["value"].as_str()) {
            node_env.insert(name.to_string(), value.to_string());
        }
    }
    let cfg = node_config("k8s: pod 0", node_env, &format!("{sts_name}-0"));
    assert_eq!(cfg.node_id.get(), 0, "pod {sts_name}-0 is node 0");
    let grace = pod["terminationGracePeriodSeconds"].as_i64().expect("terminationGracePeriodSeconds");
    let grace = Duration::from_secs(u64::try_from(grace).expect("a grace period >= 0"));
    check_grace("k8s terminationGracePeriodSeconds", grace, &cfg);
    replicas
}

#[test]
fn otlp_pair_check_catches_a_mismatch() {
    check_otlp_pair("t", "http://c:4318", None);
    check_otlp_pair("t", "http://c:4317/", Some("grpc"));
    let wrong = std::panic::catch_unwind(|| check_otlp_pair("t", "http://c:4318", Some("grpc")));
    assert!(wrong.is_err(), "gRPC to the HTTP port must be caught");
    let wrong = std::panic::catch_unwind(|| check_otlp_pair("t", "http://c:4317", None));
    assert!(wrong.is_err(), "the default protocol (HTTP) to the gRPC port must be caught");
}

#[test]
fn grace_check_catches_a_short_grace_period() {
    let env = [("DMUTEX_PEERS", "a:1"), ("DMUTEX_NODE_ID", "0")];
    let cfg = node_config("t", env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), "a");
    check_grace("t", Duration::from_secs(30), &cfg);
    let short = std::panic::catch_unwind(|| check_grace("t", Duration::from_secs(9), &cfg));
    assert!(short.is_err(), "9 s is below the 10 s floor");
    let slow = [("DMUTEX_PEERS", "a:1"), ("DMUTEX_NODE_ID", "0"), ("DMUTEX_SHUTDOWN_GRACE_MS", "30000")];
    let slow = node_config("t", slow.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), "a");
    let short = std::panic::catch_unwind(|| check_grace("t", Duration::from_secs(30), &slow));
    assert!(short.is_err(), "30 s cannot hold a 30 s shutdown grace plus a leave");
    assert_eq!(compose_duration("15s"), Duration::from_secs(15));
    assert_eq!(compose_duration("1m30s"), Duration::from_secs(90));
    assert_eq!(compose_duration("500ms"), Duration::from_millis(500));
}

/// Each property `check_k8s` stands for, broken in a copy of k8s/ (one edit at a time), makes it fail.
#[test]
fn check_k8s_catches_broken_manifests() {
    let breakages: &[(&str, &str, &str)] = &[
        ("statefulset.yaml", "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds: 5"),
        ("statefulset.yaml", "podManagementPolicy: Parallel", "podManagementPolicy: OrderedReady"),
        ("statefulset.yaml", "path: /readyz", "path: /healthz"),
        ("statefulset.yaml", "cluster.local:4318", "cluster.local:4317"),
        ("pdb.yaml", "maxUnavailable: 1", "maxUnavailable: 2"),
        ("pdb.yaml", "matchLabels:\n      app.kubernetes.io/name: dmutex", "matchLabels:\n      app: other"),
        ("configmap.yaml", "DMUTEX_BOOTSTRAP_EXPECT: \"3\"", "DMUTEX_BOOTSTRAP_EXPECT: \"4\""),
        ("configmap.yaml", "DMUTEX_SUSPECT_TIMEOUT_MS: \"1500\"", "DMUTEX_SUSPECT_TIMEOUT_MS: \"100\""),
        ("configmap.yaml", "DMUTEX_SUSPECT_TIMEOUT_MS: \"1500\"", "DMUTEX_SUSPECT_TIMEOUT_MS: \"25000\""),
    ];
    let tmp = std::env::temp_dir().join(format!("dmutex-k8s-broken-{}", std::process::id()));
    for (i, (file, from, to)) in breakages.iter().enumerate() {
        let dir = tmp.join(i.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(root().join("k8s")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(text.contains(from), "{file} no longer contains {from:?}: update this control");
        std::fs::write(dir.join(file), text.replacen(from, to, 1)).unwrap();
        let broken = std::panic::catch_unwind(|| check_k8s(&dir));
        assert!(broken.is_err(), "{file}: {from:?} -> {to:?} must fail the check");
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn k8s_pins_the_crate_version() {
    let version = env!("CARGO_PKG_VERSION");
    let (_, docs) = kustomization(&root().join("k8s"));
    let sts = docs.iter().find(|d| d["kind"].as_str() == Some("StatefulSet")).expect("a StatefulSet");
    let image = str_of(&sts["spec"]["template"]["spec"]["containers"][0]["image"], "image");
    assert_eq!(image, format!("dmutex:{version}"));
    let k = load(&root().join("k8s/kustomization.yaml")).remove(0);
    let rewrite = k["images"].as_vec().expect("images").iter().find(|i| i["name"].as_str() == Some("dmutex"));
    assert_eq!(rewrite.and_then(|i| i["newTag"].as_str()), Some(version), "kustomization newTag");
}

/// The default value of `name` in a compose file's `node` service environment (`NAME=${NAME:-default}`).
fn compose_node_var<'a>(compose: &'a Yaml, name: &str) -> Option<&'a str> {
    compose["services"]["node"]["environment"]
        .as_vec()
        .expect("environment list")
        .iter()
        .filter_map(Yaml::as_str)
        .find_map(|e| e.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        .map(compose_default)
}

#[test]
fn compose_files_pair_the_otlp_endpoint_with_its_protocol() {
    let overlay = load(&root().join("observability/docker-compose.yml")).remove(0);
    let var = |name: &str| compose_node_var(&overlay, name);
    let endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT").expect("the overlay sets an endpoint");
    check_otlp_pair("observability/docker-compose.yml", endpoint, var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    // The cluster file passes both through from the shell; should it ever set an endpoint, it is paired too.
    let compose = load(&root().join("docker-compose.yml")).remove(0);
    let var = |name: &str| compose_node_var(&compose, name);
    if let Some(endpoint) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        check_otlp_pair("docker-compose.yml", endpoint, var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    }
}

#[test]
fn k8s_peer_list_matches_the_statefulset() {
    let replicas = check_k8s(&root().join("k8s"));
    assert!(replicas >= 1);
}

#[test]
fn k8s_scale_script_keeps_the_manifests_consistent() {
    // Run the script on a copy: it rewrites k8s/ next to its own scripts/ directory.
    let tmp = std::env::temp_dir().join(format!("dmutex-k8s-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("scripts")).unwrap();
    std::fs::create_dir_all(tmp.join("k8s")).unwrap();
    std::fs::copy(root().join("scripts/k8s-scale.sh"), tmp.join("scripts/k8s-scale.sh")).unwrap();
    for entry in std::fs::read_dir(root().join("k8s")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tmp.join("k8s").join(path.file_name().unwrap())).unwrap();
    }
    for n in [5, 1, 7, 3] {
        let out = Command::new("bash")
            .arg(tmp.join("scripts/k8s-scale.sh"))
            .args([n.to_string().as_str(), "--no-apply"])
            .output()
            .expect("bash");
        assert!(out.status.success(), "k8s-scale.sh {n}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(check_k8s(&tmp.join("k8s")), n);
    }
    for bad in ["0", "x", "-1"] {
        let out = Command::new("bash").arg(tmp.join("scripts/k8s-scale.sh")).arg(bad).output().expect("bash");
        assert!(!out.status.success(), "k8s-scale.sh {bad} must fail");
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn compose_node_service_can_scale() {
    let compose = load(&root().join("docker-compose.yml")).remove(0);
    let node = &compose["services"]["node"];
    // One variable names the image for compose and for scripts/build-image.sh, with the same default.
    assert_eq!(node["image"].as_str(), Some("${DMUTEX_IMAGE:-dmutex:latest}"));
    let script = std::fs::read_to_string(root().join("scripts/build-image.sh")).expect("build-image.sh");
    assert!(
        script.contains(r#"IMAGE="${DMUTEX_IMAGE:-dmutex:latest}""#),
        "build-image.sh reads DMUTEX_IMAGE"
    );
    // A read-only root needs a writable /tmp (the built-in workload's default counter file is there).
    if node["read_only"].as_bool() == Some(true) {
        let tmpfs: Vec<&str> =
            node["tmpfs"].as_vec().into_iter().flatten().filter_map(Yaml::as_str).collect();
        assert!(tmpfs.iter().any(|t| *t == "/tmp" || t.starts_with("/tmp:")), "tmpfs /tmp: {tmpfs:?}");
    }
    // A fixed container name or host port would clash between replicas.
    assert!(node["container_name"].is_badvalue(), "no container_name on a scaled service");
    for port in node["ports"].as_vec().into_iter().flatten() {
        let port = str_of(port, "port");
        let parts: Vec<&str> = port.split(':').collect();
        assert!(
            parts.len() == 1 || parts[parts.len() - 2].is_empty(),
            "{port}: publish the container port on a random host port"
        );
    }
    let env: Vec<&str> =
        node["environment"].as_vec().expect("environment list").iter().filter_map(Yaml::as_str).collect();
    assert!(env.contains(&"DMUTEX_DISCOVERY=dns:node:7070"), "{env:?}");
    // The replica count and the bootstrap size are one shell variable, with one default.
    assert_eq!(node["scale"].as_str(), Some("${DMUTEX_CLUSTER_SIZE:-5}"));
    assert!(env.contains(&"DMUTEX_BOOTSTRAP_EXPECT=${DMUTEX_CLUSTER_SIZE:-5}"), "{env:?}");
    assert!(!node["healthcheck"].is_badvalue(), "a healthcheck");

    // The environment a replica gets (compose defaults) is a valid node configuration, and the grace period
    // before SIGKILL covers its graceful stop.
    let node_env = env
        .iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_string(), compose_default(v).to_string()));
    // A container's host name is its id.
    let cfg = node_config("docker-compose.yml", node_env.collect(), "3f4e5d6c7b8a");
    assert_eq!(cfg.bootstrap_expect, Some(5));
    let grace = compose_duration(str_of(&node["stop_grace_period"], "stop_grace_period"));
    check_grace("docker-compose.yml stop_grace_period", grace, &cfg);
}

/// `DMUTEX_ALGORITHMS` (defaulting to every algorithm) names only algorithms and includes `DMUTEX_ALGORITHM`.
fn check_algorithms(what: &str, default: Option<&str>, allowed: Option<&str>) {
    let default = default.unwrap_or_else(|| panic!("{what}: DMUTEX_ALGORITHM is not set"));
    let allowed = allowed.unwrap_or_else(|| panic!("{what}: DMUTEX_ALGORITHMS is not set"));
    let parse = |name: &str| {
        name.trim()
            .parse::<Algorithm>()
            .unwrap_or_else(|e| panic!("{what}: {name:?} is not an algorithm: {e}"))
    };
    let allowed: Vec<Algorithm> = allowed.split(',').map(parse).collect();
    assert_eq!(allowed, Algorithm::ALL.to_vec(), "{what}: the default allows every algorithm");
    assert!(allowed.contains(&parse(default)), "{what}: DMUTEX_ALGORITHMS must include {default}");
}

#[test]
fn compose_and_k8s_pass_the_allowed_algorithms() {
    let compose = load(&root().join("docker-compose.yml")).remove(0);
    let var = |name: &str| compose_node_var(&compose, name);
    check_algorithms("docker-compose.yml", var("DMUTEX_ALGORITHM"), var("DMUTEX_ALGORITHMS"));
    let (_, docs) = kustomization(&root().join("k8s"));
    let data = &find(&docs, "ConfigMap", "dmutex-config")["data"];
    check_algorithms("k8s ConfigMap", data["DMUTEX_ALGORITHM"].as_str(), data["DMUTEX_ALGORITHMS"].as_str());
}
