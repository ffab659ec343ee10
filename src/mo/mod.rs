//! mo (in progress)
