//! gateway (in progress)
