//! kcp-go's crypt layer, sans-IO: a 16-byte nonce and a CRC32 in front of every datagram, the
//! whole datagram then encrypted with AES in standard 128-bit CFB under kcp-go's fixed IV.
//!
//! ```text
//! 0      16     20
//! nonce  crc32  rest (FEC header, KCP segments)      crc32 = IEEE CRC of bytes 20.., LE
//! └───────────── AES-CFB128, IV = INITIAL_VECTOR, the nonce is plaintext block 0 ──┘
//! ```
//!
//! The IV is a public constant, so the random nonce in block 0 plays the part of the IV: every
//! later keystream block is chained from the nonce's ciphertext. There is no authentication;
//! the CRC only catches corruption and datagrams encrypted with another key. `none` keeps the
//! header (nonce + CRC) and sends the rest in clear, as kcp-go's `NewNoneBlockCrypt` does.

use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use aes::{Aes128, Aes192, Aes256};

/// Bytes of crypt header in front of every datagram: nonce 16, CRC 4.
pub const HEADER: usize = 20;
/// Bytes of nonce at the start of the header.
pub const NONCE: usize = 16;

/// kcp-go's `initialVector`: the same for every key, packet and direction.
pub const INITIAL_VECTOR: [u8; 16] = [
    167, 115, 79, 156, 18, 172, 27, 1, 164, 21, 242, 193, 252, 120, 230, 107,
];

/// Iterations and key length of rpcx's PBKDF2-HMAC-SHA1 key derivation.
pub const PBKDF2_ROUNDS: u32 = 4096;
/// rpcx's examples derive 32 bytes, which makes AES-256.
pub const DERIVED_KEY_LEN: usize = 32;

/// Why a datagram was refused by the crypt layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CryptError {
    /// Shorter than the 20-byte header.
    #[error("datagram shorter than the crypt header")]
    TooShort,
    /// The CRC32 over bytes 20.. does not match: corrupt, or sealed with another key.
    #[error("crc32 mismatch")]
    Crc,
}

/// The key as rpcx's examples derive it: PBKDF2-HMAC-SHA1(password, salt, 4096, 32 bytes).
pub fn derive_key(password: &[u8], salt: &[u8]) -> [u8; DERIVED_KEY_LEN] {
    let mut key = [0u8; DERIVED_KEY_LEN];
    pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, salt, PBKDF2_ROUNDS, &mut key);
    key
}

/// The block cipher of one endpoint; the key length picks AES-128, -192 or -256 as kcp-go's
/// `NewAESBlockCrypt` does.
#[derive(Clone)]
pub enum Crypt {
    /// Header kept, payload in clear (kcp-go's `NewNoneBlockCrypt`).
    None,
    Aes128(Box<Aes128>),
    Aes192(Box<Aes192>),
    Aes256(Box<Aes256>),
}

impl std::fmt::Debug for Crypt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Crypt::None => "none",
            Crypt::Aes128(_) => "aes-128-cfb",
            Crypt::Aes192(_) => "aes-192-cfb",
            Crypt::Aes256(_) => "aes-256-cfb",
        })
    }
}

impl Crypt {
    /// AES with a 16-, 24- or 32-byte key; `None` for any other length.
    pub fn aes(key: &[u8]) -> Option<Crypt> {
        Some(match key.len() {
            16 => Crypt::Aes128(Box::new(Aes128::new(GenericArray::from_slice(key)))),
            24 => Crypt::Aes192(Box::new(Aes192::new(GenericArray::from_slice(key)))),
            32 => Crypt::Aes256(Box::new(Aes256::new(GenericArray::from_slice(key)))),
            _ => return None,
        })
    }

    fn encrypt_block(&self, block: &mut [u8; 16]) {
        let b = GenericArray::from_mut_slice(block);
        match self {
            Crypt::None => {}
            Crypt::Aes128(c) => c.encrypt_block(b),
            Crypt::Aes192(c) => c.encrypt_block(b),
            Crypt::Aes256(c) => c.encrypt_block(b),
        }
    }

    /// Writes `nonce` and the CRC into the first 20 bytes of `dgram`, then encrypts all of it
    /// in place. The caller has left those 20 bytes free.
    pub fn seal(&self, dgram: &mut [u8], nonce: &[u8; NONCE]) {
        debug_assert!(dgram.len() >= HEADER);
        dgram[..NONCE].copy_from_slice(nonce);
        let crc = crc32fast::hash(&dgram[HEADER..]);
        dgram[NONCE..HEADER].copy_from_slice(&crc.to_le_bytes());
        if matches!(self, Crypt::None) {
            return;
        }
        // CFB128: keystream_0 = E(IV), keystream_i = E(C_{i-1}); a short last block uses the
        // first bytes of its keystream block.
        let mut feedback = INITIAL_VECTOR;
        for chunk in dgram.chunks_mut(16) {
            self.encrypt_block(&mut feedback);
            for (b, k) in chunk.iter_mut().zip(feedback.iter()) {
                *b ^= k;
            }
            feedback[..chunk.len()].copy_from_slice(chunk);
        }
    }

    /// Decrypts `dgram` in place and checks its CRC. On error the bytes are garbage.
    pub fn open(&self, dgram: &mut [u8]) -> Result<(), CryptError> {
        if dgram.len() < HEADER {
            return Err(CryptError::TooShort);
        }
        if !matches!(self, Crypt::None) {
            let mut feedback = INITIAL_VECTOR;
            let mut next = [0u8; 16];
            for chunk in dgram.chunks_mut(16) {
                self.encrypt_block(&mut feedback);
                next[..chunk.len()].copy_from_slice(chunk);
                for (b, k) in chunk.iter_mut().zip(feedback.iter()) {
                    *b ^= k;
                }
                feedback = next;
            }
        }
        let stored = u32::from_le_bytes([dgram[16], dgram[17], dgram[18], dgram[19]]);
        if crc32fast::hash(&dgram[HEADER..]) != stored {
            return Err(CryptError::Crc);
        }
        Ok(())
    }
}

/// Nonces as kcp-go makes them: an AES-128 generator with a random key and seed, each nonce the
/// previous one encrypted. Receivers never check nonces; they only need to differ, because the
/// nonce is what makes two datagrams' keystreams differ.
pub struct NonceGen {
    cipher: Aes128,
    state: [u8; 16],
}

impl NonceGen {
    /// Seeds from the operating system's random source.
    pub fn new() -> std::io::Result<NonceGen> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(std::io::Error::other)?;
        let (key, state) = seed.split_at(16);
        let mut g = NonceGen {
            cipher: Aes128::new(GenericArray::from_slice(key)),
            state: [0; 16],
        };
        g.state.copy_from_slice(state);
        Ok(g)
    }

    pub fn next(&mut self) -> [u8; 16] {
        self.cipher
            .encrypt_block(GenericArray::from_mut_slice(&mut self.state));
        self.state
    }
}

/// A random u32 from the operating system (a dialer's conversation id).
pub fn random_u32() -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    getrandom::getrandom(&mut b).map_err(std::io::Error::other)?;
    Ok(u32::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::kcp::vectors::{Capture, unhex};

    #[test]
    fn rpcx_example_key_is_pbkdf2_of_rpcx_key_and_salt() {
        let cap = Capture::load();
        assert_eq!(derive_key(b"rpcx-key", b"rpcx-salt").to_vec(), cap.key);
        assert_eq!(
            cap.key,
            unhex("5f9d2ef0a6ed0eadb0a23ad75c5e93898821ebca13a778efa8586fc8002ad083")
        );
    }

    #[test]
    fn every_captured_datagram_opens_to_the_plaintext_and_seals_back() {
        let cap = Capture::load();
        let crypt = Crypt::aes(&cap.key).unwrap();
        assert!(matches!(crypt, Crypt::Aes256(_)));
        assert_eq!(cap.datagrams.len(), 60);
        for d in &cap.datagrams {
            let mut buf = d.ciphertext.clone();
            crypt.open(&mut buf).unwrap();
            assert_eq!(buf, d.plaintext, "datagram {}", d.index);

            let mut again = d.plaintext.clone();
            again[..HEADER].fill(0);
            let nonce: [u8; 16] = d.plaintext[..16].try_into().unwrap();
            crypt.seal(&mut again, &nonce);
            assert_eq!(again, d.ciphertext, "datagram {}", d.index);
        }
    }

    #[test]
    fn first_block_is_the_nonce_under_a_fixed_mask() {
        // AES_K(IV) is one 16-byte mask per key, KCP-WIRE.md's observation.
        let cap = Capture::load();
        let mask = unhex("714f64aa64cc9b552ff48f1aba7b4312");
        for d in &cap.datagrams {
            for (i, m) in mask.iter().enumerate() {
                assert_eq!(d.ciphertext[i] ^ d.plaintext[i], *m);
            }
        }
    }

    #[test]
    fn a_flipped_bit_or_another_key_fails_the_crc() {
        let cap = Capture::load();
        let crypt = Crypt::aes(&cap.key).unwrap();
        for d in cap.datagrams.iter().take(10) {
            for pos in [0, 17, 25, d.ciphertext.len() - 1] {
                let mut buf = d.ciphertext.clone();
                buf[pos] ^= 0x40;
                // Block 0 (the nonce) is not covered by the CRC, but it feeds block 1's
                // keystream, so a flip there garbles what follows.
                assert_eq!(crypt.open(&mut buf), Err(CryptError::Crc), "pos {pos}");
            }
        }
        let other = Crypt::aes(&derive_key(b"not-rpcx", b"rpcx-salt")).unwrap();
        let mut buf = cap.datagrams[0].ciphertext.clone();
        assert_eq!(other.open(&mut buf), Err(CryptError::Crc));
        assert_eq!(crypt.open(&mut [0u8; 19]), Err(CryptError::TooShort));
    }

    #[test]
    fn none_keeps_the_header_and_checks_the_crc() {
        let cap = Capture::load();
        let mut buf = cap.datagrams[3].plaintext.clone();
        let nonce: [u8; 16] = buf[..16].try_into().unwrap();
        Crypt::None.seal(&mut buf, &nonce);
        assert_eq!(buf, cap.datagrams[3].plaintext);
        Crypt::None.open(&mut buf).unwrap();
        buf[30] ^= 1;
        assert_eq!(Crypt::None.open(&mut buf), Err(CryptError::Crc));
    }

    #[test]
    fn nonces_differ() {
        let mut g = NonceGen::new().unwrap();
        let a = g.next();
        let b = g.next();
        assert_ne!(a, b);
    }
}
