//! Encryption at rest: AES-256-GCM for SSNs and failed-intake payloads, each value stored with
//! the id of the key that sealed it (so keys can rotate), and an HMAC-SHA256 of the normalized
//! SSN so that an exact-SSN match needs no decryption.

use std::collections::HashMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::infra::settings::CryptoSettings;

/// The built-in development key id: a worker running with it logs a warning at start.
pub const DEV_KEY_ID: &str = "dev";

/// What a sealed value protects; bound into the ciphertext as associated data so that a value
/// copied from one column to another does not decrypt.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    Ssn,
    FailedPayload,
}

impl Purpose {
    fn aad(self) -> &'static [u8] {
        match self {
            Purpose::Ssn => b"case-intake/cases.ss_number",
            Purpose::FailedPayload => b"case-intake/failed_intakes.payload",
        }
    }
}

/// Why a value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("no key with id {0:?} is configured")]
    UnknownKey(String),
    #[error("the value is corrupt or was sealed with another key")]
    Corrupt,
}

/// The configured keys.
pub struct Vault {
    active: String,
    keys: HashMap<String, Aes256Gcm>,
    hmac_key: Vec<u8>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids only: never key material.
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("Vault")
            .field("active", &self.active)
            .field("keys", &ids)
            .finish()
    }
}

impl Vault {
    /// Builds the vault; every key must be 32 bytes of hex and the active key must exist.
    pub fn from_settings(settings: &CryptoSettings) -> Result<Self, String> {
        let material = settings.key_material()?;
        let mut keys = HashMap::new();
        for (id, bytes) in material.keys {
            let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|e| e.to_string())?;
            keys.insert(id, cipher);
        }
        Ok(Self {
            active: material.active,
            keys,
            hmac_key: material.hmac_key.to_vec(),
        })
    }

    /// The id of the key new values are sealed with.
    pub fn active_key(&self) -> &str {
        &self.active
    }

    /// Seals `plaintext` with the active key: a random 96-bit nonce followed by the ciphertext
    /// and tag.
    pub fn seal(&self, purpose: Purpose, plaintext: &[u8]) -> Vec<u8> {
        let cipher = &self.keys[&self.active];
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext,
            aad: purpose.aad(),
        };
        // Encryption with a valid key and in-memory buffers cannot fail.
        let ciphertext = cipher
            .encrypt(&Nonce::from(nonce), payload)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(12 + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Opens a value sealed with key `key_id`.
    pub fn open(
        &self,
        purpose: Purpose,
        key_id: &str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let cipher = self
            .keys
            .get(key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))?;
        if sealed.len() < 12 + 16 {
            return Err(CryptoError::Corrupt);
        }
        let (nonce, ciphertext) = sealed.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| CryptoError::Corrupt)?;
        cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: purpose.aad(),
                },
            )
            .map_err(|_| CryptoError::Corrupt)
    }

    /// HMAC-SHA256 of the SSN's 9 digits, for exact matching without decryption.
    pub fn ssn_hmac(&self, digits: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.hmac_key)
            .expect("HMAC accepts keys of any length");
        mac.update(digits.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// HMAC-SHA256 over `domain` and length-prefixed `parts`: a tag only the service can make,
    /// for values it writes where publishers could write too (the retry count). The domain
    /// keeps these tags apart from the SSN HMACs made with the same key.
    pub fn tag(&self, domain: &str, parts: &[&[u8]]) -> [u8; 32] {
        self.tag_mac(domain, parts).finalize().into_bytes().into()
    }

    /// Checks a tag made by [`Vault::tag`] in constant time.
    pub fn verify_tag(&self, domain: &str, parts: &[&[u8]], tag: &[u8]) -> bool {
        self.tag_mac(domain, parts).verify_slice(tag).is_ok()
    }

    fn tag_mac(&self, domain: &str, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.hmac_key)
            .expect("HMAC accepts keys of any length");
        mac.update(b"case-intake/tag/");
        mac.update(domain.as_bytes());
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::settings::Settings;

    fn vault() -> Vault {
        Vault::from_settings(&Settings::load(None).unwrap().crypto).unwrap()
    }

    #[test]
    fn sealed_values_round_trip_and_hide_the_plaintext() {
        let v = vault();
        let sealed = v.seal(Purpose::Ssn, b"111223333");
        assert!(!sealed.windows(9).any(|w| w == b"111223333"));
        assert_ne!(
            sealed,
            v.seal(Purpose::Ssn, b"111223333"),
            "fresh nonce each time"
        );
        let opened = v.open(Purpose::Ssn, v.active_key(), &sealed).unwrap();
        assert_eq!(opened, b"111223333");
    }

    #[test]
    fn a_value_does_not_open_under_another_purpose_key_or_after_tampering() {
        let v = vault();
        let mut sealed = v.seal(Purpose::Ssn, b"111223333");
        assert!(
            v.open(Purpose::FailedPayload, v.active_key(), &sealed)
                .is_err()
        );
        assert!(matches!(
            v.open(Purpose::Ssn, "nope", &sealed),
            Err(CryptoError::UnknownKey(_))
        ));
        sealed[20] ^= 1;
        assert!(v.open(Purpose::Ssn, v.active_key(), &sealed).is_err());
    }

    #[test]
    fn hmac_is_stable_and_keyed() {
        let v = vault();
        assert_eq!(v.ssn_hmac("111223333"), v.ssn_hmac("111223333"));
        assert_ne!(v.ssn_hmac("111223333"), v.ssn_hmac("111223334"));
        assert_ne!(
            v.ssn_hmac("111223333").to_vec(),
            <Sha256 as sha2::Digest>::digest(b"111223333").to_vec()
        );
    }
}
