//! Secrets at rest (CONTRACT §11): the key file, the keys one process holds, and sealing or
//! opening one stored value. Only `store` uses this, at the column boundary: every other module
//! sees plain values. The cipher itself (AES-256-GCM, the `v1:<key id>:…` layout) is pure and
//! lives in `crypto`; this module adds what `crypto` must not do: reading the key file and
//! drawing nonces.
//!
//! A process holds the key it was started with, and adopts the key a rotation moves the
//! database to (`Db` finds it through the database's `meta` table, see `store`), so that values
//! under either key open while `wafer key rotate` runs beside a serving wafer.

use crate::crypto::{sealed_key_id, CryptoError, SealKey};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// The keys a process holds: the first seals, every one opens.
pub struct Sealer {
    keys: RwLock<Vec<SealKey>>,
    /// When the database's key id was last compared with ours, or a missing key sought (unix
    /// milliseconds): at most once per [`Sealer::RECHECK_MS`], see `store::Db::seal`.
    checked_at: AtomicU64,
    sought_at: AtomicU64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer({})", self.current_id())
    }
}

/// Why a stored value could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Sealed under a key this process does not hold.
    UnknownKey(String),
    /// Under a key it holds, but it does not verify (altered, or moved from another column).
    Crypto(CryptoError),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::UnknownKey(id) => write!(
                f,
                "a value is sealed under key id {id}, which this key file is not"
            ),
            OpenError::Crypto(e) => write!(f, "a sealed value does not open: {e}"),
        }
    }
}

impl std::error::Error for OpenError {}

impl Sealer {
    /// How often a process compares its key with the database's, and at most how often it
    /// looks for a key it lacks.
    pub const RECHECK_MS: u64 = 1000;

    pub fn new(key: SealKey) -> Sealer {
        Sealer {
            keys: RwLock::new(vec![key]),
            checked_at: AtomicU64::new(0),
            sought_at: AtomicU64::new(0),
        }
    }

    /// The sealer `storage.key_file` asks for: `None` when it is empty.
    pub fn from_config(
        storage: &crate::config::StorageConfig,
    ) -> Result<Option<std::sync::Arc<Sealer>>, String> {
        if storage.key_file.is_empty() {
            return Ok(None);
        }
        let key = Sealer::read_key_file(Path::new(&storage.key_file), "storage.key_file")?;
        Ok(Some(std::sync::Arc::new(Sealer::new(key))))
    }

    /// Read a key file. `name` is what the error names (`storage.key_file`, `--new-key-file`).
    /// The file must be readable by its owner only, and hold 32 bytes, raw or as 64 hex digits.
    pub fn read_key_file(path: &Path, name: &str) -> Result<SealKey, String> {
        use std::os::unix::fs::PermissionsExt;
        let at = format!("{name} {}", path.display());
        let meta = std::fs::metadata(path).map_err(|e| format!("{at}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("{at}: not a file"));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{at}: readable by others (mode {mode:o}); it must be readable by its owner only (chmod 600)"
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("{at}: {e}"))?;
        SealKey::from_file_bytes(&bytes).map_err(|_| {
            format!(
                "{at}: must hold 32 random bytes, raw or as 64 hex digits (head -c 32 /dev/urandom > FILE)"
            )
        })
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> String {
        self.read()[0].id().to_string()
    }

    pub fn holds(&self, id: &str) -> bool {
        self.read().iter().any(|k| k.id() == id)
    }

    /// Make `key` the key that seals; the others still open. False when it already was.
    pub fn adopt(&self, key: SealKey) -> bool {
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if keys[0].id() == key.id() {
            return false;
        }
        keys.retain(|k| k.id() != key.id());
        keys.insert(0, key);
        true
    }

    /// Seal a value for its place (`"table.column"`) under the current key and a fresh nonce.
    pub fn seal(&self, aad: &str, plain: &str) -> Result<String, getrandom::Error> {
        let nonce = crate::ids::random_bytes::<12>()?;
        Ok(self.read()[0].seal(aad, &nonce, plain.as_bytes()))
    }

    /// Open a sealed value (one [`sealed_key_id`] recognises) with the key its id names.
    pub fn open(&self, aad: &str, stored: &str) -> Result<String, OpenError> {
        let id = sealed_key_id(stored).unwrap_or_default();
        let keys = self.read();
        let key = keys
            .iter()
            .find(|k| k.id() == id)
            .ok_or_else(|| OpenError::UnknownKey(id.to_string()))?;
        let plain = key.open(aad, stored).map_err(OpenError::Crypto)?;
        String::from_utf8(plain).map_err(|_| OpenError::Crypto(CryptoError::BadUtf8))
    }

    /// True at most once per [`Sealer::RECHECK_MS`] for each of the two clocks: time to compare
    /// the key with the database's (`seek == false`) or to look for a missing one.
    pub fn due(&self, seek: bool) -> bool {
        let clock = if seek {
            &self.sought_at
        } else {
            &self.checked_at
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let last = clock.load(Ordering::Relaxed);
        now.saturating_sub(last) >= Self::RECHECK_MS
            && clock
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<SealKey>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_files_must_be_owner_only_and_well_formed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        let write = |bytes: &[u8], mode: u32| {
            std::fs::write(&file, bytes).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write(&[9; 32], 0o600);
        let key = Sealer::read_key_file(&file, "storage.key_file").unwrap();
        assert_eq!(key.id(), SealKey::new([9; 32]).id());
        write(&[9; 32], 0o400);
        assert!(Sealer::read_key_file(&file, "storage.key_file").is_ok());
        for (bytes, mode, says) in [
            (&[9u8; 32][..], 0o644, "readable by others (mode 644)"),
            (&[9u8; 32][..], 0o640, "readable by others (mode 640)"),
            (&[9u8; 20][..], 0o600, "must hold 32 random bytes"),
        ] {
            write(bytes, mode);
            let e = Sealer::read_key_file(&file, "storage.key_file").unwrap_err();
            assert!(
                e.starts_with(&format!("storage.key_file {}: ", file.display())),
                "{e}"
            );
            assert!(e.contains(says), "{e}");
        }
        let e = Sealer::read_key_file(&dir.path().join("missing"), "--new-key-file").unwrap_err();
        assert!(e.starts_with("--new-key-file "), "{e}");
    }

    #[test]
    fn the_adopted_key_seals_and_both_open() {
        let s = Sealer::new(SealKey::new([1; 32]));
        let old = s.seal("apps.secret", "s3cr3t").unwrap();
        s.adopt(SealKey::new([2; 32]));
        let new = s.seal("apps.secret", "s3cr3t").unwrap();
        assert_eq!(sealed_key_id(&new), Some(SealKey::new([2; 32]).id()));
        for v in [old, new] {
            assert_eq!(s.open("apps.secret", &v).unwrap(), "s3cr3t");
        }
        let other = Sealer::new(SealKey::new([3; 32]));
        let v = other.seal("apps.secret", "x").unwrap();
        assert!(matches!(
            s.open("apps.secret", &v),
            Err(OpenError::UnknownKey(_))
        ));
        assert!(matches!(
            s.open("apps.token", &s.seal("apps.secret", "x").unwrap()),
            Err(OpenError::Crypto(_))
        ));
    }
}
