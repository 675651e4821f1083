//! What went through the field server: requests by kind, bytes each way,
//! and what it did to them (faults, region answers, proxy tunnels).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::kinds::RequestKind;
use super::shaping::Direction;
use super::timeline::{critical_path, Timeline};

/// A snapshot of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// S3 requests by kind (including those answered by a fault or a
    /// region answer).
    pub requests: BTreeMap<RequestKind, u64>,
    /// Body bytes from clients to the store.
    pub bytes_up: u64,
    /// Body bytes from the store to clients.
    pub bytes_down: u64,
    /// Requests that met a fault.
    pub faults: u64,
    /// Requests answered with a wrong-region error.
    pub region_answers: u64,
    /// TCP connections accepted.
    pub connections: u64,
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// `CONNECT` tunnels opened (as a forward proxy).
    pub connects: u64,
    /// Plain-HTTP requests received in proxy form (`GET http://…`).
    pub proxied: u64,
    /// The longest chain of S3 requests each of which started after the one
    /// before it had finished: the round trips waited for one after the
    /// other (see [`super::timeline`]; [`super::FieldServer::requests`] has
    /// the requests, to measure a part of them).
    pub critical_path: u64,
    /// Signed requests by (service of the signature's scope, access key
    /// id): which credentials reached the store (`s3`, or `sts` for
    /// AssumeRole through the same endpoint).
    pub signers: BTreeMap<(String, String), u64>,
}

impl Counts {
    /// Requests of one kind.
    pub fn of(&self, kind: RequestKind) -> u64 {
        self.requests.get(&kind).copied().unwrap_or(0)
    }

    /// All S3 requests.
    pub fn total(&self) -> u64 {
        self.requests.values().sum()
    }

    /// The access key ids that signed requests for `service` (`s3`, `sts`).
    pub fn access_keys(&self, service: &str) -> Vec<String> {
        self.signers.keys().filter(|(s, _)| s == service).map(|(_, k)| k.clone()).collect()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    counts: Mutex<Counts>,
    pub timeline: Arc<Timeline>,
}

impl Counters {
    fn with(&self, f: impl FnOnce(&mut Counts)) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c);
    }

    pub fn request(&self, kind: RequestKind) {
        self.with(|c| *c.requests.entry(kind).or_default() += 1);
    }

    pub fn add_bytes(&self, direction: Direction, n: u64) {
        self.with(|c| match direction {
            Direction::Up => c.bytes_up += n,
            Direction::Down => c.bytes_down += n,
        });
    }

    pub fn signed(&self, service: String, access_key: String) {
        self.with(|c| *c.signers.entry((service, access_key)).or_default() += 1);
    }

    pub fn fault(&self) {
        self.with(|c| c.faults += 1);
    }

    pub fn region_answer(&self) {
        self.with(|c| c.region_answers += 1);
    }

    pub fn connection(&self) {
        self.with(|c| c.connections += 1);
    }

    pub fn tls_handshake(&self) {
        self.with(|c| c.tls_handshakes += 1);
    }

    pub fn connect(&self) {
        self.with(|c| c.connects += 1);
    }

    pub fn proxied(&self) {
        self.with(|c| c.proxied += 1);
    }

    pub fn snapshot(&self) -> Counts {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        c.critical_path = critical_path(&self.timeline.records());
        c
    }

    pub fn reset(&self) {
        self.with(|c| *c = Counts::default());
        self.timeline.reset();
    }
}
