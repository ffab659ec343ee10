//! south (in progress)
