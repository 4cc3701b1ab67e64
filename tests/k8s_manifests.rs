//! The deployment files agree with each other: the Kubernetes peer list has exactly `replicas` entries in ordinal
//! order and names the StatefulSet's pods behind its headless Service in the kustomize namespace;
//! `scripts/k8s-scale.sh` keeps that true; the compose service can be scaled (no fixed names or host ports);
//! every OTLP endpoint is paired with the protocol its port speaks (the node's default protocol included); the
//! image names agree (compose and the build script share `DMUTEX_IMAGE`, Kubernetes pins the crate version);
//! both pass `DMUTEX_ALGORITHMS`, every name in it is an algorithm, and it includes `DMUTEX_ALGORITHM`.
//! Schema validation is `scripts/validate-k8s.sh`; this test checks what a schema cannot.

use dmutex::algo::Algorithm;
use dmutex::obs::telemetry::OtlpProtocol;
use std::path::{Path, PathBuf};
use std::process::Command;
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
    assert_eq!(spec["podManagementPolicy"].as_str(), Some("Parallel"));

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
    assert_eq!(str_of(&data["DMUTEX_CLUSTER_SIZE"], "DMUTEX_CLUSTER_SIZE"), replicas.to_string());

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
    assert_eq!(pdb["spec"]["maxUnavailable"].as_i64(), Some(1));

    // Hardening a schema does not require.
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));

    // Traces: the collector's port and the protocol agree (a gRPC exporter talking to 4318 sends nothing).
    let env = container["env"].as_vec().expect("env");
    let var =
        |name: &str| env.iter().find(|e| e["name"].as_str() == Some(name)).and_then(|e| e["value"].as_str());
    if let Some(endpoint) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        check_otlp_pair("k8s/statefulset.yaml", endpoint, var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    }
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
fn compose_overlay_pairs_the_otlp_endpoint_with_its_protocol() {
    let overlay = load(&root().join("observability/docker-compose.yml")).remove(0);
    let var = |name: &str| compose_node_var(&overlay, name);
    let endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT").expect("the overlay sets an endpoint");
    check_otlp_pair("observability/docker-compose.yml", endpoint, var("OTEL_EXPORTER_OTLP_PROTOCOL"));
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
    assert!(env.contains(&"DMUTEX_CLUSTER_SIZE=${DMUTEX_CLUSTER_SIZE:-5}"), "{env:?}");
    assert!(!node["healthcheck"].is_badvalue(), "a healthcheck");
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
