//! The gateway: wires listeners, the service, south and the store together.

pub mod service;

pub use service::{Answer, Service};
