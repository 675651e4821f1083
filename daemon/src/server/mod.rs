//! The daemon process: the socket and single-instance lock (`socket`), the
//! gRPC service that runs each session (`service`), and logging (`logging`).

pub mod logging;
pub(crate) mod service;
pub mod socket;
