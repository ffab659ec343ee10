//! verifier (in progress)
