//! Field conditions for a whole test run: `GIT_S3_TEST_FIELD` puts a field
//! server in front of every [`crate::TestEnv`], so existing end-to-end tests
//! run over a network like the one users have (latency, TLS, faults).
//!
//! `GIT_S3_TEST_FIELD=1` is the CI profile: 20 ms round trips, TLS, and a
//! fault on 5 % of the requests of every kind (503 SlowDown, 500
//! InternalError, a reset mid-response; 409 ConditionalRequestConflict on
//! conditional writes), drawn from a fixed seed. Settings can be changed
//! one by one: `GIT_S3_TEST_FIELD=rtt=50,tls=0,faults=0.1,seed=7`.

use std::time::Duration;

use super::{Fault, FaultAction, FieldServer, RequestKind};

/// Every kind of request: the faults of a field run hit them all.
pub const ALL_KINDS: &[RequestKind] = &[
    RequestKind::List,
    RequestKind::Get,
    RequestKind::RangedGet,
    RequestKind::Head,
    RequestKind::HeadBucket,
    RequestKind::Put,
    RequestKind::ConditionalPut,
    RequestKind::Copy,
    RequestKind::CreateMultipart,
    RequestKind::Part,
    RequestKind::Complete,
    RequestKind::Abort,
    RequestKind::Delete,
    RequestKind::OtherBucket,
];

#[derive(Debug, Clone, PartialEq)]
pub struct FieldConditions {
    /// Round trip, split evenly between the two directions.
    pub rtt: Duration,
    pub tls: bool,
    /// Share of requests that meet a fault.
    pub fault_rate: f64,
    pub seed: u64,
}

impl Default for FieldConditions {
    fn default() -> Self {
        FieldConditions { rtt: Duration::from_millis(20), tls: true, fault_rate: 0.05, seed: 20261202 }
    }
}

impl FieldConditions {
    /// From `GIT_S3_TEST_FIELD` (unset, empty or `0`: none).
    pub fn from_env() -> Option<FieldConditions> {
        let v = std::env::var("GIT_S3_TEST_FIELD").ok()?;
        FieldConditions::parse(&v).unwrap_or_else(|e| panic!("GIT_S3_TEST_FIELD={v}: {e}"))
    }

    pub fn parse(spec: &str) -> Result<Option<FieldConditions>, String> {
        let spec = spec.trim();
        if spec.is_empty() || spec == "0" {
            return Ok(None);
        }
        let mut c = FieldConditions::default();
        if spec == "1" {
            return Ok(Some(c));
        }
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item.split_once('=').ok_or_else(|| format!("'{item}' is not key=value"))?;
            let bad = |_| format!("bad value in '{item}'");
            match k.trim() {
                "rtt" => c.rtt = Duration::from_millis(v.trim().parse().map_err(bad)?),
                "tls" => c.tls = matches!(v.trim(), "1" | "true" | "yes"),
                "faults" => c.fault_rate = v.trim().parse().map_err(|_| format!("bad value in '{item}'"))?,
                "seed" => c.seed = v.trim().parse().map_err(bad)?,
                other => return Err(format!("unknown setting '{other}' (rtt, tls, faults, seed)")),
            }
        }
        Ok(Some(c))
    }

    /// The fault rules: the rate split evenly between 503, 500 and a reset
    /// on every kind, and 409 on conditional writes (so those meet about a
    /// third more).
    pub fn faults(&self) -> Vec<Fault> {
        let each = self.fault_rate / 3.0;
        vec![
            Fault::new(FaultAction::Conflict, &[RequestKind::ConditionalPut, RequestKind::Complete], each),
            Fault::new(FaultAction::SlowDown, ALL_KINDS, each),
            Fault::new(FaultAction::InternalError, ALL_KINDS, each),
            Fault::new(FaultAction::ResetMidBody, ALL_KINDS, each),
        ]
    }

    /// A field server with these conditions.
    pub fn start(&self) -> FieldServer {
        let server = if self.tls { FieldServer::start_tls() } else { FieldServer::start() };
        server.set_latency(self.rtt / 2, self.rtt - self.rtt / 2);
        server.set_faults(self.seed, self.faults());
        server
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles() {
        assert_eq!(FieldConditions::parse("").unwrap(), None);
        assert_eq!(FieldConditions::parse("0").unwrap(), None);
        assert_eq!(FieldConditions::parse("1").unwrap(), Some(FieldConditions::default()));
        let c = FieldConditions::parse("rtt=50, tls=0,faults=0.1,seed=7").unwrap().unwrap();
        assert_eq!(c, FieldConditions { rtt: Duration::from_millis(50), tls: false, fault_rate: 0.1, seed: 7 });
        assert!(FieldConditions::parse("latency=3").is_err());
        assert!(FieldConditions::parse("rtt=x").is_err());
        let total: f64 = c.faults().iter().filter(|f| f.kinds.contains(&RequestKind::Get)).map(|f| f.share).sum();
        assert!((total - 0.1).abs() < 1e-9, "{total}");
    }
}
