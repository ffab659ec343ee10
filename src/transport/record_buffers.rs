//! OpenSSL's DTLS record buffers, held by a session only while it is inside an SSL call.
//!
//! An established OpenSSL session keeps a read and a write record buffer of ~16.7 KB each
//! for its whole life. An idle device session (most of a fleet, most of the time) needs
//! neither: [`lend`] sets them up before every call into OpenSSL that may read or write a
//! record, [`release`] gives them back as soon as the call returns with nothing left in
//! them (`SSL_free_buffers` refuses while a record is half read or half written). Freed
//! buffers go back to the allocator and serve the next busy session.
//!
//! Both must bracket *every* post-handshake SSL call that can touch a record: OpenSSL
//! 3.0's DTLS record layer sets up the read buffer lazily but writes into the write buffer
//! without checking it exists (a write, an alert, or a retransmitted flight after a
//! session's buffers were freed would dereference NULL).

use foreign_types::ForeignTypeRef;
use openssl::ssl::SslRef;

unsafe extern "C" {
    fn SSL_alloc_buffers(ssl: *mut openssl_sys::SSL) -> std::ffi::c_int;
    fn SSL_free_buffers(ssl: *mut openssl_sys::SSL) -> std::ffi::c_int;
}

/// Makes sure `ssl` has both record buffers. `false` if they could not be allocated: the
/// session must not call into OpenSSL then.
pub fn lend(ssl: &SslRef) -> bool {
    // SAFETY: `ssl` is a live SSL object; SSL_alloc_buffers only allocates the buffers it
    // lacks and is a no-op for those it has.
    unsafe { SSL_alloc_buffers(ssl.as_ptr()) == 1 }
}

/// Frees `ssl`'s record buffers unless one holds data still to be read or written (then
/// they stay until a later call empties them).
pub fn release(ssl: &SslRef) {
    // SAFETY: `ssl` is a live SSL object, not inside another call (the session owns it
    // exclusively); SSL_free_buffers checks for pending data itself and then does nothing.
    unsafe {
        SSL_free_buffers(ssl.as_ptr());
    }
}
