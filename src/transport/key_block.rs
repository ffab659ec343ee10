//! The DTLS 1.2 key expansion for the AEAD suites a compact session protects itself.
//!
//! OpenSSL runs the handshake and leaves the master secret and both randoms; this module
//! turns them into each direction's write key and implicit nonce part ("salt") with the
//! TLS 1.2 PRF (RFC 5246 §5, §6.3). Every suite [`Suite`] names uses the SHA-256 PRF and has
//! no MAC key, so the key block is `client key ‖ server key ‖ client salt ‖ server salt`.
//! Sans-IO: bytes in, keys out.

use ring::hmac;

/// An AEAD cipher suite whose records a compact session can protect (AES-128, 4-byte salt,
/// 8-byte explicit nonce, SHA-256 PRF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// AES-128-CCM with an 8-byte tag (RFC 6655, RFC 7251): `*_WITH_AES_128_CCM_8`.
    Ccm8,
    /// AES-128-CCM with a 16-byte tag: `*_WITH_AES_128_CCM`.
    Ccm,
    /// AES-128-GCM (RFC 5288, RFC 5487): `*_WITH_AES_128_GCM_SHA256`.
    Gcm,
}

impl Suite {
    /// The suite with this IANA number, if a compact session can carry it.
    pub fn from_protocol_id(id: [u8; 2]) -> Option<Suite> {
        match id {
            // TLS_PSK_WITH_AES_128_CCM_8, TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
            [0xC0, 0xA8] | [0xC0, 0xAE] => Some(Suite::Ccm8),
            // TLS_PSK_WITH_AES_128_CCM, TLS_ECDHE_ECDSA_WITH_AES_128_CCM
            [0xC0, 0xA4] | [0xC0, 0xAC] => Some(Suite::Ccm),
            // TLS_PSK_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            [0x00, 0xA8] | [0xC0, 0x2B] => Some(Suite::Gcm),
            _ => None,
        }
    }

    /// Bytes of authentication tag per record.
    pub fn tag_len(self) -> usize {
        match self {
            Suite::Ccm8 => 8,
            Suite::Ccm | Suite::Gcm => 16,
        }
    }
}

/// One direction's keys.
pub struct DirectionKeys {
    /// The AES-128 write key.
    pub key: [u8; 16],
    /// The implicit part of every record's nonce.
    pub salt: [u8; 4],
}

impl Drop for DirectionKeys {
    fn drop(&mut self) {
        self.key.fill(0);
        self.salt.fill(0);
    }
}

/// Both directions' keys.
pub struct KeyBlock {
    /// What the client writes with (and the server reads with).
    pub client: DirectionKeys,
    /// What the server writes with.
    pub server: DirectionKeys,
}

/// Expands the session's master secret into its key block ("key expansion", seeded with
/// server random ‖ client random).
pub fn expand(master_secret: &[u8], client_random: &[u8], server_random: &[u8]) -> KeyBlock {
    let mut seed = Vec::with_capacity(server_random.len() + client_random.len());
    seed.extend_from_slice(server_random);
    seed.extend_from_slice(client_random);
    let mut block = [0u8; 40];
    prf_sha256(master_secret, b"key expansion", &seed, &mut block);
    let mut keys = KeyBlock {
        client: DirectionKeys {
            key: [0; 16],
            salt: [0; 4],
        },
        server: DirectionKeys {
            key: [0; 16],
            salt: [0; 4],
        },
    };
    keys.client.key.copy_from_slice(&block[0..16]);
    keys.server.key.copy_from_slice(&block[16..32]);
    keys.client.salt.copy_from_slice(&block[32..36]);
    keys.server.salt.copy_from_slice(&block[36..40]);
    block.fill(0);
    keys
}

/// The TLS 1.2 PRF with SHA-256: `P_SHA256(secret, label ‖ seed)` filling `out`.
pub fn prf_sha256(secret: &[u8], label: &[u8], seed: &[u8], out: &mut [u8]) {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut label_seed = Vec::with_capacity(label.len() + seed.len());
    label_seed.extend_from_slice(label);
    label_seed.extend_from_slice(seed);
    // A(1) = HMAC(secret, label ‖ seed); A(i) = HMAC(secret, A(i-1)).
    let mut a = hmac::sign(&key, &label_seed);
    for chunk in out.chunks_mut(32) {
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(a.as_ref());
        ctx.update(&label_seed);
        let block = ctx.sign();
        chunk.copy_from_slice(&block.as_ref()[..chunk.len()]);
        a = hmac::sign(&key, a.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The widely used TLS 1.2 PRF (SHA-256) test vector (IETF TLS WG list, 2009).
    #[test]
    fn the_prf_matches_the_published_sha256_vector() {
        let secret = unhex("9b be 43 6b a9 40 f0 17 b1 76 52 84 9a 71 db 35");
        let seed = unhex("a0 ba 9f 93 6c da 31 18 27 a6 f7 96 ff d5 19 8c");
        let mut out = [0u8; 100];
        prf_sha256(&secret, b"test label", &seed, &mut out);
        let expected = unhex(
            "e3 f2 29 ba 72 7b e1 7b 8d 12 26 20 55 7c d4 53 c2 aa b2 1d 07 c3 d4 95
             32 9b 52 d4 e6 1e db 5a 6b 30 17 91 e9 0d 35 c9 c9 a4 6b 4e 14 ba f9 af
             0f a0 22 f7 07 7d ef 17 ab fd 37 97 c0 56 4b ab 4f bc 91 66 6e 9d ef 9b
             97 fc e3 4f 79 67 89 ba a4 80 82 d1 22 ee 42 c5 a7 2e 5a 51 10 ff f7 01
             87 34 7b 66",
        );
        assert_eq!(out.as_slice(), expected.as_slice());
    }

    #[test]
    fn the_key_block_splits_into_keys_then_salts() {
        let keys = expand(&[7u8; 48], &[1u8; 32], &[2u8; 32]);
        let mut block = [0u8; 40];
        let mut seed = vec![2u8; 32];
        seed.extend_from_slice(&[1u8; 32]);
        prf_sha256(&[7u8; 48], b"key expansion", &seed, &mut block);
        assert_eq!(keys.client.key, block[0..16]);
        assert_eq!(keys.server.key, block[16..32]);
        assert_eq!(keys.client.salt, block[32..36]);
        assert_eq!(keys.server.salt, block[36..40]);
        assert_ne!(keys.client.key, keys.server.key);
    }

    #[test]
    fn only_aes_128_aead_suites_are_carried() {
        assert_eq!(Suite::from_protocol_id([0xC0, 0xA8]), Some(Suite::Ccm8));
        assert_eq!(Suite::from_protocol_id([0xC0, 0xAE]), Some(Suite::Ccm8));
        assert_eq!(Suite::from_protocol_id([0x00, 0xA8]), Some(Suite::Gcm));
        // TLS_PSK_WITH_AES_128_CBC_SHA256: MAC-then-encrypt stays with OpenSSL.
        assert_eq!(Suite::from_protocol_id([0x00, 0xAE]), None);
    }
}
