//! TLS for the field server: a CA generated for the test run, and a server
//! certificate it signed for `127.0.0.1`, `localhost` and Amazon S3's host
//! names (see [`super::aws`]). Clients trust the
//! CA through its PEM file (`AWS_CA_BUNDLE` or a profile's `ca_bundle`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct TestCa {
    /// The CA certificate, PEM.
    pub pem: String,
    ca_der: CertificateDer<'static>,
    bundle: PathBuf,
    _dir: tempfile::TempDir,
    server: Arc<rustls::ServerConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TestCa {
    /// A new CA and server certificate (panics: test setup).
    pub fn generate() -> TestCa {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "git-s3 field test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");

        let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        names.extend(super::aws::certificate_names());
        let mut leaf_params = CertificateParams::new(names).expect("server params");
        leaf_params.distinguished_name.push(DnType::CommonName, "git-s3 field server");
        let leaf_key = KeyPair::generate().expect("server key");
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).expect("server certificate");

        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
            .expect("server TLS config");
        server.alpn_protocols = vec![b"http/1.1".to_vec()];

        let dir = tempfile::Builder::new().prefix("field-ca-").tempdir().expect("CA dir");
        let bundle = dir.path().join("ca.pem");
        let pem = ca.pem();
        std::fs::write(&bundle, &pem).expect("write the CA bundle");
        TestCa { pem, ca_der: ca.der().clone(), bundle, _dir: dir, server: Arc::new(server) }
    }

    /// The CA as a PEM file.
    pub fn bundle_path(&self) -> &Path {
        &self.bundle
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }

    /// A client configuration that trusts this CA only.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("add the CA");
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}
