//! `scripts/dev-certs.sh` (the README's way to make a test CA with the Debian `openssl` package) makes what the
//! node loads: the CA, the API pair and the peer pairs load through `dmutex::tls` (the node's own loader), and
//! each certificate verifies against the CA for exactly the names it should (the peer certificate for its host
//! and no other, as the peer identity check needs). Without openssl the test says so and passes, except under
//! CI (`CI=true`), where the tool must be there.

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use std::path::Path;
use std::process::Command;

fn verifies_for(dir: &Path, cert: &str, name: &str) -> bool {
    let roots = dmutex::tls::load_ca(&dir.join("ca.crt")).unwrap();
    let verifier =
        WebPkiServerVerifier::builder_with_provider(roots, dmutex::tls::provider()).build().unwrap();
    let chain = dmutex::tls::load_certs(&dir.join(cert)).unwrap();
    let name = ServerName::try_from(name.to_string()).unwrap();
    verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now()).is_ok()
}

#[test]
fn dev_certs_script_makes_credentials_the_node_loads_for_exactly_their_names() {
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(std::env::var("CI").is_err(), "openssl is missing under CI");
        eprintln!("SKIPPED: openssl is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dev-certs.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(dir.path())
        .args(["127.0.0.2", "node-1.example"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d = dir.path();
    for pair in ["api", "peer-127.0.0.2", "peer-node-1.example"] {
        dmutex::tls::load_key_pair(&d.join(format!("{pair}.crt")), &d.join(format!("{pair}.key")))
            .unwrap_or_else(|e| panic!("{pair}: {e}"));
    }
    assert!(verifies_for(d, "api.crt", "localhost") && verifies_for(d, "api.crt", "127.0.0.1"));
    assert!(verifies_for(d, "api.crt", "node"));
    assert!(verifies_for(d, "peer-127.0.0.2.crt", "127.0.0.2"));
    assert!(!verifies_for(d, "peer-127.0.0.2.crt", "127.0.0.3"), "a peer certificate names one host");
    assert!(verifies_for(d, "peer-node-1.example.crt", "node-1.example"));
    assert!(!verifies_for(d, "peer-node-1.example.crt", "node-2.example"));
    let tokens = std::fs::read_to_string(d.join("tokens")).unwrap();
    let lines: Vec<&str> = tokens.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l.split_once(' ').is_some_and(|(t, _)| t.len() == 64)));
    // Running it again keeps the CA (peers can be added later) and adds the new peer only.
    let ca = std::fs::read(d.join("ca.crt")).unwrap();
    let again = Command::new("bash").arg(&script).arg(d).arg("127.0.0.3").output().unwrap();
    assert!(again.status.success());
    assert_eq!(std::fs::read(d.join("ca.crt")).unwrap(), ca);
    assert!(verifies_for(d, "peer-127.0.0.3.crt", "127.0.0.3"));
}
