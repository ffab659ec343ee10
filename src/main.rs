//! The `privgw` binary: the process-wide memory setup, then the command line.

use std::ffi::{c_char, c_int, c_void};

/// mimalloc rather than glibc's allocator: a proxied request allocates dozens of small
/// buffers (CoAP options, packets, channel messages) across two worker threads, and glibc's
/// malloc/free/consolidation was ~20 % of the gateway's CPU under proxy load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    no_transparent_huge_pages();
    openssl_allocates_with_mimalloc();
    privgw::cli::main()
}

/// No transparent huge pages for this process (and the fleet and gateway children `bench`
/// starts). mimalloc asks for them on its arenas; a fault then zeroes and keeps resident a
/// whole 2 MiB, including the never-touched tails of every session's OpenSSL buffers. At
/// 10 000 DTLS sessions (`bench group`, same build, alternating runs): cold write 2.1–2.6 s →
/// 1.6–1.9 s, 41.5 → 36.8 KiB per session together with [`openssl_allocates_with_mimalloc`].
fn no_transparent_huge_pages() {
    // The kernel reads the variadic arguments as unsigned longs and wants the unused ones 0.
    let (disable, unused): (libc::c_ulong, libc::c_ulong) = (1, 0);
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours. It can
    // only fail on kernels without it (before 3.15); then THP stays as the system has it.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, disable, unused, unused, unused) };
}

unsafe extern "C" {
    fn CRYPTO_set_mem_functions(
        malloc: unsafe extern "C" fn(usize, *const c_char, c_int) -> *mut c_void,
        realloc: unsafe extern "C" fn(*mut c_void, usize, *const c_char, c_int) -> *mut c_void,
        free: unsafe extern "C" fn(*mut c_void, *const c_char, c_int),
    ) -> c_int;
}

unsafe extern "C" fn openssl_malloc(size: usize, _: *const c_char, _: c_int) -> *mut c_void {
    // SAFETY: mimalloc's malloc has no preconditions.
    unsafe { libmimalloc_sys::mi_malloc(size) }
}

unsafe extern "C" fn openssl_realloc(
    ptr: *mut c_void,
    size: usize,
    _: *const c_char,
    _: c_int,
) -> *mut c_void {
    // SAFETY: OpenSSL passes NULL or a pointer it got from these functions.
    unsafe { libmimalloc_sys::mi_realloc(ptr, size) }
}

unsafe extern "C" fn openssl_free(ptr: *mut c_void, _: *const c_char, _: c_int) {
    // SAFETY: as for `openssl_realloc`.
    unsafe { libmimalloc_sys::mi_free(ptr) }
}

/// OpenSSL allocates with mimalloc too (an SSL object, its handshake buffer, the record
/// buffers lent per call): glibc's `_int_malloc` under OpenSSL was a tenth of the gateway's
/// CPU in a cold 10 000-device write. Without huge pages (above) mimalloc also keeps less
/// resident; with them it kept more (46 KiB per session). OpenSSL accepts new functions only
/// before its first allocation, hence first in `main`; if refused, glibc's stay (correct,
/// only slower).
fn openssl_allocates_with_mimalloc() {
    // SAFETY: called before any other OpenSSL call in this process, with a matching
    // malloc/realloc/free set.
    let _ = unsafe { CRYPTO_set_mem_functions(openssl_malloc, openssl_realloc, openssl_free) };
}
