//! front (in progress)
