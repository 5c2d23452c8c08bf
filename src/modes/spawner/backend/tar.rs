//! A minimal ustar writer: enough to hand a container a few small files through the Docker API
//! before it starts (the runnerd token), without a tar dependency.

/// One entry of an archive.
pub enum TarEntry<'a> {
    Dir {
        path: &'a str,
        mode: u32,
    },
    File {
        path: &'a str,
        mode: u32,
        bytes: &'a [u8],
    },
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

fn header(path: &str, mode: u32, size: u64, typeflag: u8) -> [u8; 512] {
    assert!(path.len() < 100, "tar paths here are short");
    let mut h = [0u8; 512];
    h[..path.len()].copy_from_slice(path.as_bytes());
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    h
}

/// The archive holding `entries` (owned by uid/gid 0).
pub fn archive(entries: &[TarEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        match entry {
            TarEntry::Dir { path, mode } => {
                out.extend_from_slice(&header(&format!("{path}/"), *mode, 0, b'5'))
            }
            TarEntry::File { path, mode, bytes } => {
                out.extend_from_slice(&header(path, *mode, bytes.len() as u64, b'0'));
                out.extend_from_slice(bytes);
                out.resize(out.len().div_ceil(512) * 512, 0);
            }
        }
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The system `tar` reads our archive back with the right names, modes and bytes.
    #[test]
    fn system_tar_reads_it() {
        let dir = std::env::temp_dir().join(format!("tale-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = archive(&[
            TarEntry::Dir {
                path: ".tale",
                mode: 0o755,
            },
            TarEntry::File {
                path: ".tale/token",
                mode: 0o400,
                bytes: b"abc",
            },
        ]);
        std::fs::write(dir.join("a.tar"), &bytes).unwrap();
        let listing = std::process::Command::new("tar")
            .args(["-tvf", "a.tar"])
            .current_dir(&dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&listing.stdout);
        assert!(
            text.contains("drwxr-xr-x") && text.contains(".tale/"),
            "{text}"
        );
        assert!(
            text.contains("-r--------") && text.contains(".tale/token"),
            "{text}"
        );
        let status = std::process::Command::new("tar")
            .args(["-xf", "a.tar"])
            .current_dir(&dir)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read(dir.join(".tale/token")).unwrap(), b"abc");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
