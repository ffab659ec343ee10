//! lwm2m (in progress)
