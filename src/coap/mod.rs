//! coap (in progress)
