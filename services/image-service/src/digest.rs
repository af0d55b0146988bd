//! sha256 digests in the `sha256:<hex>` form.

use sha2::{Digest, Sha256};

pub fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
