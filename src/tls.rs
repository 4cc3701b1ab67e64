//! What the TLS users (the HTTPS API, mutual TLS on peer links, the CLI's clients) share: the one crypto
//! provider (ring: no OpenSSL, no C/cmake build beyond `cc`), PEM loading with errors that name the file, and
//! credentials that are re-read when their files change (Kubernetes updates a mounted Secret in place).
//!
//! Rules: nothing here logs key material; a reload that fails keeps the credentials in use (and says so in
//! the log); a process never relies on a process-wide default provider.

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

/// The crypto provider of every TLS configuration in the process: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A credential file that could not be used: which file, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {what}", path.display())]
pub struct TlsError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub what: String,
}

impl TlsError {
    fn new(path: &Path, what: impl Into<String>) -> Self {
        TlsError { path: path.to_path_buf(), what: what.into() }
    }
}

/// The certificates of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::new(path, format!("cannot read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::new(path, "holds no certificate (expected -----BEGIN CERTIFICATE-----)"));
    }
    Ok(certs)
}

/// A certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1 PEM), checked to belong
/// together.
pub fn load_key_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certs(cert)?;
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::new(key, format!("no usable private key: {e}")))?;
    let pair = CertifiedKey::from_der(chain, der, &provider())
        .map_err(|e| TlsError::new(key, format!("does not fit the certificate {}: {e}", cert.display())))?;
    Ok(Arc::new(pair))
}

/// The trust anchors of a PEM CA bundle (at least one usable certificate).
pub fn load_ca(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::new(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// A value built from files, kept current: [`Reloading::get`] answers the latest value that loaded; a task
/// started by [`Reloading::watch`] re-reads the files every interval and rebuilds the value when their bytes
/// changed.
pub struct Reloading<T> {
    what: &'static str,
    files: Vec<PathBuf>,
    load: Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>,
    state: RwLock<(Arc<T>, [u8; 32])>,
    /// Told the outcome of every reload attempt (`true`: the new value is in use), e.g. to count it.
    hook: OnceLock<Box<dyn Fn(bool) + Send + Sync>>,
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Loads the value once (an error here is a configuration error: the caller exits naming the key).
    /// `what` names it in logs (`API certificate`), `files` are the inputs of `load`.
    pub fn new(
        what: &'static str,
        files: Vec<PathBuf>,
        load: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Arc<Self>, TlsError> {
        let stamp = stamp(&files);
        let value = load()?;
        Ok(Arc::new(Reloading {
            what,
            files,
            load: Box::new(load),
            state: RwLock::new((Arc::new(value), stamp)),
            hook: OnceLock::new(),
        }))
    }

    /// Sets the function told the outcome of every reload attempt (once; later calls are ignored).
    pub fn on_reload(&self, hook: impl Fn(bool) + Send + Sync + 'static) {
        let _ = self.hook.set(Box::new(hook));
    }

    fn tell(&self, ok: bool) {
        if let Some(hook) = self.hook.get() {
            hook(ok);
        }
    }

    /// The current value.
    pub fn get(&self) -> Arc<T> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// Checks the files now: reloads if their contents changed. Returns whether a new value is in use.
    pub fn check(&self) -> bool {
        let now = stamp(&self.files);
        if now == self.state.read().unwrap_or_else(|e| e.into_inner()).1 {
            return false;
        }
        match (self.load)() {
            Ok(value) => {
                *self.state.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(value), now);
                tracing::info!(what = self.what, "credentials reloaded from changed files");
                self.tell(true);
                true
            }
            Err(e) => {
                // Keep serving with what works; try again only when the files change once more.
                self.state.write().unwrap_or_else(|e| e.into_inner()).1 = now;
                tracing::warn!(what = self.what, error = %e, "changed credential files do not load: keeping the old ones");
                self.tell(false);
                false
            }
        }
    }

    /// Starts the periodic check on the current tokio runtime (the task ends when the value is dropped).
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                // File reads are small but blocking: keep them off the runtime's workers.
                let _ = tokio::task::spawn_blocking(move || me.check()).await;
            }
        });
    }
}

/// A digest of the files' bytes (an unreadable file counts as empty): changes when any of them changes,
/// including a Kubernetes Secret's symlink swap, which keeps mtimes of the old target.
fn stamp(files: &[PathBuf]) -> [u8; 32] {
    let mut h = Sha256::new();
    for f in files {
        let bytes = std::fs::read(f).unwrap_or_default();
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&c, cert.cert.pem()).unwrap();
        std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn loads_a_pair_and_names_the_file_that_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = pair(dir.path(), "a.example");
        assert_eq!(load_key_pair(&c, &k).unwrap().cert.len(), 1);
        let (_, other_key) = pair(dir.path(), "b.example");
        let e = load_key_pair(&c, &other_key).unwrap_err();
        assert_eq!(e.path, other_key, "{e}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hello").unwrap();
        assert_eq!(load_certs(&garbage).unwrap_err().path, garbage);
        assert_eq!(load_key_pair(&c, &garbage).unwrap_err().path, garbage);
        assert!(load_ca(&dir.path().join("missing.pem")).unwrap_err().what.contains("cannot read"));
    }

    #[test]
    fn reloads_on_change_and_keeps_the_old_value_when_the_new_files_are_bad() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = pair(dir.path(), "a.example");
        let (c2, k2) = (c.clone(), k.clone());
        let r =
            Reloading::new("test certificate", vec![c.clone(), k.clone()], move || load_key_pair(&c2, &k2))
                .unwrap();
        let first = r.get().cert[0].clone();
        assert!(!r.check(), "nothing changed");
        std::fs::write(&c, "not a certificate").unwrap();
        assert!(!r.check(), "a bad file is not taken");
        assert_eq!(r.get().cert[0], first, "the old pair stays in use");
        let (nc, nk) = pair(dir.path(), "b.example");
        std::fs::copy(&nc, &c).unwrap();
        std::fs::copy(&nk, &k).unwrap();
        assert!(r.check(), "a good new pair is taken");
        assert_ne!(r.get().cert[0], first);
    }
}
