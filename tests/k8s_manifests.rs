//! The deployment files agree with each other: the Kubernetes seed list (`DMUTEX_PEERS`) names the first
//! `DMUTEX_BOOTSTRAP_EXPECT` pods of the StatefulSet behind its headless Service in the kustomize namespace, in
//! ordinal order, and `replicas` starts every seed; the compose service can be scaled (no fixed names or host
//! ports); every OTLP endpoint is paired with the protocol its port speaks (the node's default protocol
//! included); the image names agree (compose and the build script share `DMUTEX_IMAGE`, Kubernetes pins the
//! crate version); both pass `DMUTEX_ALGORITHMS`, every name in it is an algorithm, and it includes
//! `DMUTEX_ALGORITHM`.
//!
//! Scaling without restarts: the environment pods 0, 2, 3 and 7 get (the ConfigMap, then the container's env
//! with Kubernetes' `$(VAR)` expansion and the pod's name and namespace from the downward API) loads through the
//! node's own parser; each pod's id is its ordinal, each advertises its name under the headless Service, the
//! seeds (0..2) are the formation set and advertise their own `DMUTEX_PEERS` entry, and a pod beyond them is a
//! valid joiner (without `DMUTEX_ADVERTISE_ADDR` it would be refused with `NodeIdOutOfRange`, which
//! `k8s_pod_beyond_the_seeds_without_an_advertised_address_is_refused` checks).
//!
//! Rolling updates: the grace period before SIGKILL (`terminationGracePeriodSeconds`, `stop_grace_period`)
//! covers that configuration's graceful stop (shutdown grace + a leave + margin, at least 10 s); the pods have
//! readiness on `/readyz` and liveness on `/healthz`; the StatefulSet updates one pod at a time; a
//! PodDisruptionBudget of one selects them; pods start in parallel (formation needs every seed).
//! `check_k8s_catches_broken_manifests` breaks each of those in a copy and asserts the check fails.
//!
//! Schema validation is `scripts/validate-k8s.sh`; this test checks what a schema cannot.

use dmutex::algo::Algorithm;
use dmutex::config::{ConfigError, ConfigSources, NodeConfig, NodeIdSource};
use dmutex::obs::telemetry::OtlpProtocol;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

/// What the node's own parser makes of a deployment's environment (`DMUTEX_*` only) on a host of that name.
fn load_node_config(env: BTreeMap<String, String>, host_name: &str) -> Result<NodeConfig, ConfigError> {
    let env = env.into_iter().filter(|(k, _)| k.starts_with("DMUTEX_")).collect();
    let sources = ConfigSources { env, host_name: Some(host_name.to_string()), ..ConfigSources::default() };
    NodeConfig::load(&sources)
}

/// The node configuration a deployment's environment gives, which must be valid.
fn node_config(what: &str, env: BTreeMap<String, String>, host_name: &str) -> NodeConfig {
    load_node_config(env, host_name).unwrap_or_else(|e| panic!("{what}: not a valid node configuration: {e}"))
}

/// A container `env` value as Kubernetes expands it: `$(NAME)` of a variable defined before it (by `envFrom`
/// or an earlier `env` entry) is replaced, `$$` is a literal `$`, any other reference stays as written.
fn k8s_expand(value: &str, defined: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some((name, after)) = rest.strip_prefix("$(").and_then(|r| r.split_once(')')) {
            match defined.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = after;
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The StatefulSet's pods that the checks load: seeds 0 and 2 (the first and the last of the formation set),
/// the first pod beyond them and one further out.
const PODS: [u16; 4] = [0, 2, 3, 7];

/// The environment of the StatefulSet pod with this ordinal (the ConfigMaps of `envFrom`, then the container's
/// `env` in order: values expanded as Kubernetes does, the downward API's pod name and namespace, an optional
/// secret absent), and its host name (the pod name).
fn pod_env(dir: &Path, ordinal: u16) -> (BTreeMap<String, String>, String) {
    let (ns, docs) = kustomization(dir);
    let sts = docs.iter().find(|d| d["kind"].as_str() == Some("StatefulSet")).expect("a StatefulSet");
    let pod_name = format!("{}-{ordinal}", str_of(&sts["metadata"]["name"], "StatefulSet name"));
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    let mut env = BTreeMap::new();
    for source in container["envFrom"].as_vec().into_iter().flatten() {
        let name = str_of(&source["configMapRef"]["name"], "envFrom: only configMapRef is modelled");
        for (k, v) in find(&docs, "ConfigMap", name)["data"].as_hash().expect("ConfigMap data") {
            env.insert(str_of(k, "ConfigMap key").to_string(), str_of(v, "ConfigMap value").to_string());
        }
    }
    for e in container["env"].as_vec().expect("env") {
        let name = str_of(&e["name"], "env name");
        let from = &e["valueFrom"];
        let value = if let Some(value) = e["value"].as_str() {
            k8s_expand(value, &env)
        } else if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
            match path {
                "metadata.name" => pod_name.clone(),
                "metadata.namespace" => ns.clone(),
                other => panic!("env {name}: fieldRef {other} is not modelled"),
            }
        } else if from["secretKeyRef"]["optional"].as_bool() == Some(true) {
            continue; // the secret may be absent: then the variable is unset
        } else {
            panic!("env {name}: a source this test does not model: {e:?}");
        };
        env.insert(name.to_string(), value);
    }
    (env, pod_name)
}

/// What the node's parser makes of the environment of the pod with this ordinal.
fn pod_config(dir: &Path, ordinal: u16) -> Result<NodeConfig, ConfigError> {
    let (env, host_name) = pod_env(dir, ordinal);
    load_node_config(env, &host_name)
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
    let pod_addr = |i: u16| format!("{sts_name}-{i}.{service_name}.{ns}.svc.cluster.local:{peer_port}");
    let peers: Vec<&str> = str_of(&data["DMUTEX_PEERS"], "DMUTEX_PEERS").split(',').collect();
    let expect: usize = str_of(&data["DMUTEX_BOOTSTRAP_EXPECT"], "DMUTEX_BOOTSTRAP_EXPECT")
        .parse()
        .expect("DMUTEX_BOOTSTRAP_EXPECT is a number");
    assert_eq!(
        peers.len(),
        expect,
        "DMUTEX_PEERS lists the seeds: the DMUTEX_BOOTSTRAP_EXPECT pods that form"
    );
    for (i, peer) in (0u16..).zip(&peers) {
        // Entry i is pod ordinal i, which is node id i (the node reads the ordinal from its host name).
        assert_eq!(*peer, pod_addr(i));
    }
    assert!(replicas >= expect, "replicas ({replicas}) must start every seed: formation needs all {expect}");
    assert!(
        data["DMUTEX_CLUSTER_SIZE"].is_badvalue(),
        "one name for the bootstrap size: DMUTEX_BOOTSTRAP_EXPECT"
    );
    // Formation needs every seed: pods must not wait for each other to be ready before they start.
    assert_eq!(spec["podManagementPolicy"].as_str(), Some("Parallel"), "podManagementPolicy");
    // Rolling updates replace one pod at a time (each gated by readiness), every pod (no partition).
    let update = &spec["updateStrategy"];
    assert_eq!(update["type"].as_str(), Some("RollingUpdate"), "updateStrategy");
    let rolling = &update["rollingUpdate"];
    let one_of =
        |field: &str, allowed: i64| rolling[field].is_badvalue() || rolling[field].as_i64() == Some(allowed);
    assert!(one_of("maxUnavailable", 1), "rollingUpdate.maxUnavailable: one pod at a time");
    assert!(one_of("partition", 0), "rollingUpdate.partition: every pod is updated");

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

    // What each pod is given is a valid node configuration: its id is its ordinal, it advertises its own name
    // under the headless Service, the seeds form the cluster and any other pod joins; and the grace period
    // before SIGKILL covers its graceful stop.
    let grace = pod["terminationGracePeriodSeconds"].as_i64().expect("terminationGracePeriodSeconds");
    let grace = Duration::from_secs(u64::try_from(grace).expect("a grace period >= 0"));
    for ordinal in PODS {
        let what = format!("k8s: pod {sts_name}-{ordinal}");
        let cfg = pod_config(dir, ordinal)
            .unwrap_or_else(|e| panic!("{what}: not a valid node configuration: {e}"));
        assert_eq!(cfg.node_id.get(), ordinal, "{what}: the node id is the ordinal");
        let own = pod_addr(ordinal);
        assert_eq!(
            cfg.advertise_addr.as_ref().map(ToString::to_string),
            Some(own.clone()),
            "{what}: advertise"
        );
        // How many of the peers form view 1 (the node's rule: the first DMUTEX_BOOTSTRAP_EXPECT of them).
        let formation = cfg.bootstrap_expect.unwrap_or(cfg.peers.len()).min(cfg.peers.len());
        assert_eq!(formation, expect, "{what}: the seeds are the formation set");
        if usize::from(ordinal) < formation {
            assert_eq!(cfg.node_id_source, NodeIdSource::PeerEntry, "{what}: a seed finds its own entry");
            assert_eq!(
                cfg.peers[usize::from(ordinal)].to_string(),
                own,
                "{what}: a seed advertises its entry"
            );
        } else {
            assert_eq!(cfg.node_id_source, NodeIdSource::HostOrdinal, "{what}: a joiner's id is its ordinal");
        }
        check_grace(&format!("{what}: terminationGracePeriodSeconds"), grace, &cfg);
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
        ("statefulset.yaml", "type: RollingUpdate", "type: OnDelete"),
        ("statefulset.yaml", "maxUnavailable: 1", "maxUnavailable: 2"),
        ("statefulset.yaml", "replicas: 3", "replicas: 2"),
        // The advertised name under another Service, or built from a variable not defined before it.
        ("statefulset.yaml", "$(POD_NAME).dmutex-peers.", "$(POD_NAME).dmutex."),
        ("statefulset.yaml", "value: $(POD_NAME).", "value: $(HOSTNAME)."),
        ("statefulset.yaml", "fieldPath: metadata.name", "fieldPath: metadata.uid"),
        ("statefulset.yaml", "path: /readyz", "path: /healthz"),
        ("statefulset.yaml", "cluster.local:4318", "cluster.local:4317"),
        ("pdb.yaml", "maxUnavailable: 1", "maxUnavailable: 2"),
        ("pdb.yaml", "matchLabels:\n      app.kubernetes.io/name: dmutex", "matchLabels:\n      app: other"),
        ("configmap.yaml", "DMUTEX_BOOTSTRAP_EXPECT: \"3\"", "DMUTEX_BOOTSTRAP_EXPECT: \"4\""),
        ("configmap.yaml", "DMUTEX_BOOTSTRAP_EXPECT: \"3\"", "DMUTEX_BOOTSTRAP_EXPECT: \"2\""),
        ("configmap.yaml", ",dmutex-2.dmutex-peers.dmutex.svc.cluster.local:7070", ""),
        ("configmap.yaml", "DMUTEX_SUSPECT_TIMEOUT_MS: \"1500\"", "DMUTEX_SUSPECT_TIMEOUT_MS: \"100\""),
        ("configmap.yaml", "DMUTEX_SUSPECT_TIMEOUT_MS: \"1500\"", "DMUTEX_SUSPECT_TIMEOUT_MS: \"25000\""),
    ];
    let tmp = std::env::temp_dir().join(format!("dmutex-k8s-broken-{}", std::process::id()));
    for (i, (file, from, to)) in breakages.iter().enumerate() {
        let dir = broken_copy(&tmp.join(i.to_string()), file, from, to);
        let broken = std::panic::catch_unwind(|| check_k8s(&dir));
        assert!(broken.is_err(), "{file}: {from:?} -> {to:?} must fail the check");
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// A copy of k8s/ in `dir` with the first `from` in `file` replaced by `to`.
fn broken_copy(dir: &Path, file: &str, from: &str, to: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(root().join("k8s")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    assert!(text.contains(from), "{file} no longer contains {from:?}: update this control");
    std::fs::write(dir.join(file), text.replacen(from, to, 1)).unwrap();
    dir.to_path_buf()
}

/// `kubectl scale` needs no other change: pods 0, 2, 3 and 7 of the manifests as written load as the seeds
/// 0..2 (formation set of three, each advertising its own seed entry) and joiners 3 and 7 (ids from the
/// ordinal, beyond the seed list, each with its own advertised name).
#[test]
fn k8s_pods_beyond_the_seeds_advertise_their_name_and_join() {
    let dir = root().join("k8s");
    let seeds = [0, 1, 2].map(|i| format!("dmutex-{i}.dmutex-peers.dmutex.svc.cluster.local:7070"));
    for ordinal in PODS {
        let cfg = pod_config(&dir, ordinal).unwrap_or_else(|e| panic!("pod {ordinal}: {e}"));
        assert_eq!(cfg.node_id.get(), ordinal);
        assert_eq!(cfg.peers.iter().map(ToString::to_string).collect::<Vec<_>>(), seeds);
        assert_eq!(cfg.bootstrap_expect, Some(3));
        let own = format!("dmutex-{ordinal}.dmutex-peers.dmutex.svc.cluster.local:7070");
        assert_eq!(cfg.advertise_addr.map(|a| a.to_string()), Some(own));
        let source = if ordinal < 3 { NodeIdSource::PeerEntry } else { NodeIdSource::HostOrdinal };
        assert_eq!(cfg.node_id_source, source, "pod {ordinal}");
    }
}

/// The control for the test above: without `DMUTEX_ADVERTISE_ADDR`, the seeds still load but pod 3 is refused
/// as beyond the peer list, which `check_k8s` reports.
#[test]
fn k8s_pod_beyond_the_seeds_without_an_advertised_address_is_refused() {
    let tmp = std::env::temp_dir().join(format!("dmutex-k8s-no-advertise-{}", std::process::id()));
    let entry = "            - name: DMUTEX_ADVERTISE_ADDR\n              value: \
                 $(POD_NAME).dmutex-peers.$(POD_NAMESPACE).svc.cluster.local:7070\n";
    let dir = broken_copy(&tmp, "statefulset.yaml", entry, "");
    let (env, _) = pod_env(&dir, 3);
    assert!(!env.contains_key("DMUTEX_ADVERTISE_ADDR"), "the entry was removed");
    let seed = pod_config(&dir, 2).expect("a seed needs no advertised address");
    assert_eq!((seed.node_id.get(), seed.advertise_addr), (2, None));
    assert_eq!(
        pod_config(&dir, 3).map(|c| c.node_id),
        Err(ConfigError::NodeIdOutOfRange { id: 3, peers: 3 })
    );
    assert_eq!(
        pod_config(&dir, 7).map(|c| c.node_id),
        Err(ConfigError::NodeIdOutOfRange { id: 7, peers: 3 })
    );
    assert!(std::panic::catch_unwind(|| check_k8s(&dir)).is_err(), "check_k8s must refuse it");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn k8s_expansion_follows_kubernetes() {
    let defined: BTreeMap<String, String> =
        [("A", "x"), ("B", "y")].map(|(k, v)| (k.into(), v.into())).into();
    assert_eq!(k8s_expand("$(A).$(B):1", &defined), "x.y:1");
    assert_eq!(k8s_expand("$(C)-$$(A)-$", &defined), "$(C)-$(A)-$");
    assert_eq!(k8s_expand("$(A", &defined), "$(A");
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

/// The secure overlay (`k8s-secure/`) fits together: every credential file the node is pointed at lies in a
/// mounted volume that provides it (the API certificate's Secret made by a Certificate of this overlay, the
/// per-pod peer certificate from the cert-manager CSI driver signed by this overlay's CA issuer, the tokens
/// Secret); each peer certificate names exactly the pod's own advertised peer host (so it cannot claim
/// another node's id) and the API certificate names the client Service; the keys are the node's; probes use
/// HTTPS and stay on the open paths; the namespace agrees with the base.
#[test]
fn k8s_secure_overlay_points_the_node_at_the_credentials_it_mounts() {
    let dir = root().join("k8s-secure");
    let k = load(&dir.join("kustomization.yaml")).remove(0);
    let (base_namespace, base) = kustomization(&root().join("k8s"));
    assert_eq!(str_of(&k["namespace"], "namespace"), base_namespace);
    let certs = load(&dir.join("certificates.yaml"));
    let patch = load(&dir.join("statefulset-tls.yaml")).remove(0);
    let pod = &patch["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let env: BTreeMap<&str, &str> = (c["env"].as_vec().unwrap().iter())
        .map(|e| (str_of(&e["name"], "env name"), str_of(&e["value"], "env value")))
        .collect();
    let mounts: Vec<(&str, &str)> = (c["volumeMounts"].as_vec().unwrap().iter())
        .map(|m| (str_of(&m["name"], "mount name"), str_of(&m["mountPath"], "mountPath")))
        .collect();
    let volume = |name: &str| {
        pod["volumes"].as_vec().unwrap().iter().find(|v| v["name"].as_str() == Some(name)).cloned()
    };
    let certificate_secrets: Vec<&str> = (certs.iter())
        .filter(|d| d["kind"].as_str() == Some("Certificate"))
        .map(|d| str_of(&d["spec"]["secretName"], "secretName"))
        .collect();
    let issuers: Vec<&str> = (certs.iter())
        .filter(|d| d["kind"].as_str() == Some("Issuer"))
        .map(|d| str_of(&d["metadata"]["name"], "issuer"))
        .collect();
    let files = [
        ("DMUTEX_TLS_CERT", "tls.crt"),
        ("DMUTEX_TLS_KEY", "tls.key"),
        ("DMUTEX_PEER_TLS_CERT", "tls.crt"),
        ("DMUTEX_PEER_TLS_KEY", "tls.key"),
        ("DMUTEX_PEER_TLS_CA", "ca.crt"),
        ("DMUTEX_API_TOKENS_FILE", "tokens"),
    ];
    for (var, file) in files {
        let key = var.trim_start_matches("DMUTEX_").to_ascii_lowercase();
        assert!(dmutex::config::KEYS.contains(&key.as_str()), "{var} is no configuration key");
        let path = Path::new(env.get(var).unwrap_or_else(|| panic!("{var} is not set")));
        assert_eq!(path.file_name().unwrap(), file, "{var}: the volume provides {file}");
        let (name, _) = *mounts
            .iter()
            .find(|(_, at)| path.parent() == Some(Path::new(at)))
            .unwrap_or_else(|| panic!("{var}={} is in no mounted volume", path.display()));
        let v = volume(name).unwrap_or_else(|| panic!("volume {name} is not defined"));
        if let Some(secret) = v["secret"]["secretName"].as_str() {
            let made_here = certificate_secrets.contains(&secret);
            assert!(made_here || secret == "dmutex-api-tokens", "{var}: Secret {secret} comes from nowhere");
        } else {
            let csi = &v["csi"];
            assert_eq!(csi["driver"].as_str(), Some("csi.cert-manager.io"), "{var}: volume {name}");
            let attrs = &csi["volumeAttributes"];
            assert!(issuers.contains(&str_of(&attrs["csi.cert-manager.io/issuer-name"], "issuer")), "{var}");
            assert!(str_of(&attrs["csi.cert-manager.io/key-usages"], "usages").contains("client auth"));
            // The peer certificate names the pod's own advertised host, nothing else.
            let sts = find(&base, "StatefulSet", "dmutex");
            let base_env = sts["spec"]["template"]["spec"]["containers"][0]["env"].as_vec().unwrap();
            let advertise =
                base_env.iter().find(|e| e["name"].as_str() == Some("DMUTEX_ADVERTISE_ADDR")).unwrap();
            let host = str_of(&advertise["value"], "advertise").rsplit_once(':').unwrap().0;
            let names = str_of(&attrs["csi.cert-manager.io/dns-names"], "dns-names");
            assert_eq!(names.replace("${", "$(").replace('}', ")"), host, "peer certificate names");
        }
    }
    let api = find(&certs, "Certificate", "dmutex-api");
    let names: Vec<&str> =
        api["spec"]["dnsNames"].as_vec().unwrap().iter().map(|n| str_of(n, "dnsName")).collect();
    find(&base, "Service", "dmutex");
    assert!(names.contains(&format!("dmutex.{base_namespace}.svc").as_str()), "{names:?}");
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        assert_eq!(c[probe]["httpGet"]["scheme"].as_str(), Some("HTTPS"), "{probe}");
    }
    assert_eq!(env.get("DMUTEX_METRICS_AUTH"), Some(&"open"), "the annotated scrape carries no token");
}

/// The compose security override points the node at files `scripts/dev-certs.sh` writes, in the directory it
/// mounts, with keys the node knows; and `docker-compose config` accepts the pair of files where compose is
/// installed.
#[test]
fn compose_secure_override_uses_the_files_dev_certs_makes() {
    let overlay = load(&root().join("docker-compose.secure.yml")).remove(0);
    let volumes = overlay["services"]["node"]["volumes"].as_vec().unwrap();
    let mount = volumes.iter().filter_map(Yaml::as_str).find_map(|v| v.rsplit(':').nth(1)).unwrap();
    // What the script writes (where openssl is installed; tests/dev_certs.rs checks the contents).
    let made = tempfile::tempdir().unwrap();
    let ran = std::process::Command::new("bash")
        .arg(root().join("scripts/dev-certs.sh"))
        .arg(made.path())
        .output()
        .is_ok_and(|o| o.status.success());
    for (var, file) in [
        ("DMUTEX_TLS_CERT", "api.crt"),
        ("DMUTEX_TLS_KEY", "api.key"),
        ("DMUTEX_API_TOKENS_FILE", "tokens"),
        ("DMUTEX_CLUSTER_SECRET_FILE", "cluster-secret"),
    ] {
        let key = var.trim_start_matches("DMUTEX_").to_ascii_lowercase();
        assert!(dmutex::config::KEYS.contains(&key.as_str()), "{var}");
        assert_eq!(compose_node_var(&overlay, var), Some(format!("{mount}/{file}").as_str()), "{var}");
        assert!(!ran || made.path().join(file).is_file(), "scripts/dev-certs.sh does not write {file}");
    }
    let base = load(&root().join("docker-compose.yml")).remove(0);
    assert!(compose_node_var(&base, "DMUTEX_CLUSTER_SECRET").is_none(), "the base sets no secret of its own");
    if std::process::Command::new("docker-compose").arg("version").output().is_ok() {
        let out = std::process::Command::new("docker-compose")
            .current_dir(root())
            .args(["-f", "docker-compose.yml", "-f", "docker-compose.secure.yml", "config", "-q"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}
