//! Which files a run read, so that its outputs can say so wherever they travel: each input's
//! absolute path and the SHA-256 of its content.

use anyhow::{Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// `path` made absolute (symbolic links resolved where the file exists), as the run found it.
pub fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// The SHA-256 of the file's content, in lower-case hex.
pub fn sha256(path: &Path) -> Result<String> {
    let ctx = || format!("hashing input {}", path.display());
    let mut f = std::fs::File::open(path).with_context(ctx)?;
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(ctx)?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
    }
    Ok(digest
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_sha256_of_the_content() {
        let dir = std::env::temp_dir().join(format!("shoal-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("abc.txt");
        std::fs::write(&p, b"abc").unwrap();
        // FIPS 180-2's example: SHA-256("abc").
        assert_eq!(
            sha256(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(absolute(Path::new("abc.txt")).is_absolute());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
