//! Tests of the workspace file operations in a scratch directory (outside/ is "the host").
use super::*;
use crate::shared::protocol::runnerd::EntryType;
use std::os::unix::fs::{symlink, MetadataExt};

struct Scratch {
    base: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let base = std::env::temp_dir().join(format!(
            "tale-files-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(base.join("ws")).unwrap();
        std::fs::create_dir_all(base.join("outside")).unwrap();
        std::fs::write(base.join("outside/secret"), b"host file").unwrap();
        Scratch { base }
    }
    fn ws(&self) -> PathBuf {
        std::fs::canonicalize(self.base.join("ws")).unwrap()
    }
    fn outside(&self) -> PathBuf {
        self.base.join("outside")
    }
    fn workspace(&self, owner: Option<(u32, u32)>) -> Workspace {
        Workspace::open(&self.ws(), owner).unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn b64(bytes: &[u8]) -> String {
    base64_simd::STANDARD.encode_to_string(bytes)
}

fn inline(path: &str, bytes: &[u8]) -> StageItem {
    StageItem {
        path: path.into(),
        url: None,
        content_base64: Some(b64(bytes)),
    }
}

fn reasons(reply: &StageReply) -> Vec<(String, String)> {
    reply
        .skipped
        .iter()
        .map(|s| (s.path.clone(), s.reason.clone()))
        .collect()
}

/// Inline files land beneath the root with parents created and owned by the exec user.
#[tokio::test]
async fn stage_inline_creates_parents_owned_by_the_exec_user() {
    let s = Scratch::new("stage");
    let ws = s.workspace(Some((4242, 4343)));
    let reply = ws
        .stage(StageRequest {
            files: vec![
                inline("a/b/c.txt", b"hello"),
                inline(&format!("{}/top.txt", s.ws().display()), b"x"),
            ],
        })
        .await;
    assert!(reply.skipped.is_empty(), "{:?}", reply.skipped);
    assert_eq!(
        reply.staged[0],
        StagedFile {
            path: "a/b/c.txt".into(),
            bytes: 5
        }
    );
    assert_eq!(std::fs::read(s.ws().join("a/b/c.txt")).unwrap(), b"hello");
    for path in ["a", "a/b", "a/b/c.txt", "top.txt"] {
        let meta = std::fs::metadata(s.ws().join(path)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (4242, 4343), "{path}");
    }
    // Replacing an existing file works.
    ws.stage(StageRequest {
        files: vec![inline("a/b/c.txt", b"again")],
    })
    .await;
    assert_eq!(std::fs::read(s.ws().join("a/b/c.txt")).unwrap(), b"again");
}

/// Escapes by `..`, absolute paths, NUL, and symlinked parents never write outside the root.
#[tokio::test]
async fn stage_never_writes_outside() {
    let s = Scratch::new("escape");
    symlink(s.outside(), s.ws().join("link-out")).unwrap();
    symlink("../outside", s.ws().join("rel-out")).unwrap();
    let ws = s.workspace(None);
    let reply = ws
        .stage(StageRequest {
            files: vec![
                inline("../outside/x", b"1"),
                inline(&format!("{}/x", s.outside().display()), b"1"),
                inline("a\0b", b"1"),
                inline("link-out/x", b"1"),
                inline("rel-out/x", b"1"),
                inline("link-out/new-dir/x", b"1"),
                inline(".", b"1"),
            ],
        })
        .await;
    assert!(reply.staged.is_empty(), "{:?}", reply.staged);
    assert!(
        reasons(&reply).iter().all(|(_, r)| r == "unsafe_path"),
        "{:?}",
        reasons(&reply)
    );
    let outside: Vec<_> = std::fs::read_dir(s.outside())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside, vec!["secret"]);
}

/// A symlink at the final name is replaced by the file; its outside target is untouched.
#[tokio::test]
async fn stage_replaces_a_final_symlink_instead_of_following_it() {
    let s = Scratch::new("final");
    symlink(s.outside().join("secret"), s.ws().join("target.txt")).unwrap();
    let ws = s.workspace(None);
    let reply = ws
        .stage(StageRequest {
            files: vec![inline("target.txt", b"mine")],
        })
        .await;
    assert_eq!(reply.staged.len(), 1, "{:?}", reply.skipped);
    assert_eq!(
        std::fs::read(s.outside().join("secret")).unwrap(),
        b"host file"
    );
    let meta = std::fs::symlink_metadata(s.ws().join("target.txt")).unwrap();
    assert!(meta.is_file());
    assert_eq!(std::fs::read(s.ws().join("target.txt")).unwrap(), b"mine");
}

/// Symlinks that stay inside the workspace are followed for parents.
#[tokio::test]
async fn stage_follows_symlinks_that_stay_inside() {
    let s = Scratch::new("inside");
    std::fs::create_dir_all(s.ws().join("real")).unwrap();
    symlink("real", s.ws().join("alias")).unwrap();
    let ws = s.workspace(None);
    let reply = ws
        .stage(StageRequest {
            files: vec![inline("alias/f", b"ok")],
        })
        .await;
    assert_eq!(reply.staged.len(), 1, "{:?}", reply.skipped);
    assert_eq!(std::fs::read(s.ws().join("real/f")).unwrap(), b"ok");
}

/// Size cap, bad base64 and missing sources are reported per item.
#[tokio::test]
async fn stage_item_refusals() {
    let s = Scratch::new("refuse");
    let ws = s.workspace(None);
    let big = vec![0u8; MAX_STAGE_INLINE_BYTES as usize + 1];
    let reply = ws
        .stage(StageRequest {
            files: vec![
                inline("big", &big),
                StageItem {
                    path: "bad".into(),
                    url: None,
                    content_base64: Some("%%%".into()),
                },
                StageItem {
                    path: "none".into(),
                    url: None,
                    content_base64: None,
                },
                StageItem {
                    path: "ftp".into(),
                    url: Some("ftp://example.invalid/x".into()),
                    content_base64: None,
                },
            ],
        })
        .await;
    assert_eq!(
        reasons(&reply),
        vec![
            ("big".into(), "too_large".into()),
            ("bad".into(), "bad_base64".into()),
            ("none".into(), "no_source".into()),
            ("ftp".into(), "unsupported_url".into()),
        ]
    );
    assert!(!s.ws().join("big").exists());
}

/// Delete removes files and trees, counts missing paths as deleted, removes symlinks themselves,
/// and refuses the root and anything through a symlink that leaves it.
#[tokio::test]
async fn delete_rules() {
    let s = Scratch::new("delete");
    std::fs::create_dir_all(s.ws().join("tree/sub")).unwrap();
    std::fs::write(s.ws().join("tree/sub/f"), b"x").unwrap();
    std::fs::write(s.ws().join("file"), b"x").unwrap();
    symlink(s.outside(), s.ws().join("link-out")).unwrap();
    symlink(s.outside().join("secret"), s.ws().join("file-link")).unwrap();
    // A symlink inside the tree pointing out: removing the tree must not follow it.
    symlink(s.outside(), s.ws().join("tree/sub/escape")).unwrap();
    let ws = s.workspace(None);
    let reply = ws
        .delete(DeleteRequest {
            paths: vec![
                "tree".into(),
                "file".into(),
                "missing/deeper".into(),
                "file-link".into(),
                "link-out/secret".into(),
                ".".into(),
                "..".into(),
                "/etc/passwd".into(),
            ],
        })
        .await;
    assert_eq!(
        reply.deleted,
        vec!["tree", "file", "missing/deeper", "file-link"]
    );
    let skipped: Vec<_> = reply
        .skipped
        .iter()
        .map(|s| (s.path.as_str(), s.reason.as_str()))
        .collect();
    assert_eq!(
        skipped,
        vec![
            ("link-out/secret", "unsafe_path"),
            (".", "unsafe_path"),
            ("..", "unsafe_path"),
            ("/etc/passwd", "unsafe_path")
        ]
    );
    assert!(!s.ws().join("tree").exists());
    assert_eq!(
        std::fs::read(s.outside().join("secret")).unwrap(),
        b"host file"
    );
    assert!(s.ws().join("link-out").exists());
}

/// List reports files, dirs and symlinks (as other) with sizes; read returns regular files only.
#[tokio::test]
async fn list_and_read() {
    let s = Scratch::new("list");
    std::fs::create_dir_all(s.ws().join("d")).unwrap();
    std::fs::write(s.ws().join("f"), b"12345").unwrap();
    symlink(s.outside(), s.ws().join("out")).unwrap();
    symlink("f", s.ws().join("inner-link")).unwrap();
    let ws = s.workspace(None);
    let listing = ws.list(".").await.unwrap();
    let summary: Vec<_> = listing
        .entries
        .iter()
        .map(|e| (e.name.as_str(), e.kind, e.size))
        .collect();
    assert_eq!(summary[0], ("d", EntryType::Dir, summary[0].2));
    assert_eq!(summary[1], ("f", EntryType::File, 5));
    assert_eq!(summary[2].1, EntryType::Other);
    assert_eq!(summary[3].1, EntryType::Other);
    assert!(listing.entries[1].mtime_ms > 0);
    assert_eq!(ws.list("").await.unwrap(), listing);
    assert_eq!(ws.list("out").await, Err(FileError::NotFound));
    assert_eq!(ws.list("missing").await, Err(FileError::NotFound));
    assert_eq!(ws.list("f").await, Err(FileError::NotFound));
    assert_eq!(ws.read("f").await.unwrap(), b"12345");
    assert_eq!(ws.read("inner-link").await.unwrap(), b"12345");
    assert_eq!(ws.read("out/secret").await, Err(FileError::NotFound));
    assert_eq!(ws.read("../outside/secret").await, Err(FileError::NotFound));
    assert_eq!(ws.read("d").await, Err(FileError::NotFound));
    let big = std::fs::File::create(s.ws().join("big")).unwrap();
    big.set_len(MAX_READ_FILE_BYTES + 1).unwrap();
    assert_eq!(ws.read("big").await, Err(FileError::NotFound));
}

/// A tiny HTTP server answering one fixed response per connection.
async fn serve_once(response: &'static [u8]) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(response).await;
            let _ = stream.shutdown().await;
        }
    });
    format!("http://{addr}/file")
}

/// URL staging: success, HTTP errors, declared and streamed sizes over the cap, empty bodies.
#[tokio::test]
async fn stage_from_url() {
    let s = Scratch::new("url");
    let ws = s.workspace(None);
    let ok =
        serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello").await;
    let missing =
        serve_once(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
    let declared = serve_once(
        b"HTTP/1.1 200 OK\r\ncontent-length: 999999999999\r\nconnection: close\r\n\r\nx",
    )
    .await;
    let empty = serve_once(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n").await;
    let url = |path: &str, url: String| StageItem {
        path: path.into(),
        url: Some(url),
        content_base64: None,
    };
    let reply = ws
        .stage(StageRequest {
            files: vec![
                url("dl/ok.txt", ok),
                url("nf", missing),
                url("big", declared),
                url("empty", empty),
            ],
        })
        .await;
    assert_eq!(
        reply.staged,
        vec![StagedFile {
            path: "dl/ok.txt".into(),
            bytes: 5
        }]
    );
    assert_eq!(std::fs::read(s.ws().join("dl/ok.txt")).unwrap(), b"hello");
    assert_eq!(
        reasons(&reply),
        vec![
            ("nf".into(), "http_404".into()),
            ("big".into(), "too_large".into()),
            ("empty".into(), "no_body".into())
        ]
    );
    let leftovers: Vec<_> = std::fs::read_dir(s.ws())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        leftovers
            .iter()
            .all(|n| !n.to_string_lossy().starts_with(".tale-stage")),
        "{leftovers:?}"
    );
}

/// A file written in chunks appears at its name only on commit, whole, owned by the exec user,
/// with no staging file left; ranged reads give it back piece by piece with its size.
#[tokio::test]
async fn chunked_write_and_ranged_read() {
    let s = Scratch::new("chunked");
    let ws = s.workspace(Some((4242, 4343)));
    let chunk = |n: u8| bytes::Bytes::from(vec![n; 5]);
    assert_eq!(ws.write_chunk("d/big.bin", 0, chunk(1), false).await, Ok(5));
    assert_eq!(
        ws.write_chunk("d/big.bin", 5, chunk(2), false).await,
        Ok(10)
    );
    assert!(
        !s.ws().join("d/big.bin").exists(),
        "not visible before commit"
    );
    assert_eq!(
        ws.write_chunk("d/big.bin", 10, chunk(3), true).await,
        Ok(15)
    );
    let written = std::fs::read(s.ws().join("d/big.bin")).unwrap();
    assert_eq!(written, [[1u8; 5], [2; 5], [3; 5]].concat());
    let meta = std::fs::metadata(s.ws().join("d/big.bin")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4242, 4343));
    let names: Vec<_> = std::fs::read_dir(s.ws().join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["big.bin"], "no staging file left");
    assert_eq!(
        ws.read_range("d/big.bin", 4, 3).await,
        Ok((vec![1, 2, 2], 15))
    );
    assert_eq!(ws.read_range("d/big.bin", 14, 100).await, Ok((vec![3], 15)));
    assert_eq!(ws.read_range("d/big.bin", 99, 100).await, Ok((vec![], 15)));
    assert_eq!(ws.read_range("d", 0, 1).await, Err(FileError::NotFound));
    assert_eq!(ws.read_range("nope", 0, 1).await, Err(FileError::NotFound));
    // An empty file is one committing chunk.
    assert_eq!(
        ws.write_chunk("empty", 0, bytes::Bytes::new(), true).await,
        Ok(0)
    );
    assert_eq!(std::fs::read(s.ws().join("empty")).unwrap(), b"");
}

/// A chunk must start where the staging file ends; a later chunk with no staging file is told
/// to start over (size 0).
#[tokio::test]
async fn chunked_write_offsets() {
    use chunked::WriteFailure;
    let s = Scratch::new("offsets");
    let ws = s.workspace(None);
    let data = bytes::Bytes::from_static(b"abc");
    assert_eq!(
        ws.write_chunk("f", 3, data.clone(), false).await,
        Err(WriteError::Failed(WriteFailure::Offset(0)))
    );
    ws.write_chunk("f", 0, data.clone(), false).await.unwrap();
    assert_eq!(
        ws.write_chunk("f", 2, data.clone(), false).await,
        Err(WriteError::Failed(WriteFailure::Offset(3)))
    );
    assert_eq!(
        ws.write_chunk("f", 4, data.clone(), true).await,
        Err(WriteError::Failed(WriteFailure::Offset(3)))
    );
    // Offset 0 starts over.
    ws.write_chunk("f", 0, data.clone(), true).await.unwrap();
    assert_eq!(std::fs::read(s.ws().join("f")).unwrap(), b"abc");
    for bad in ["../x", "/etc/x", ""] {
        assert_eq!(
            ws.write_chunk(bad, 0, data.clone(), true).await,
            Err(WriteError::Failed(WriteFailure::Path("unsafe_path".into()))),
            "{bad}"
        );
    }
}

/// Between two chunks the exec user may swap the staging file for a symlink, a hard link to a
/// host file, a file it does not own or a FIFO: the next chunk refuses each (no hang), and the
/// host file is never written. Commit replaces a symlink at the final name, never its target.
#[tokio::test]
async fn chunked_write_never_follows_what_the_exec_user_planted() {
    use chunked::WriteFailure;
    let s = Scratch::new("planted");
    let ws = s.workspace(Some((4242, 4343)));
    let secret = s.outside().join("secret");
    let staging = s.ws().join(".f.tale-upload");
    let data = bytes::Bytes::from_static(b"abc");
    let unsafe_path = Err(WriteError::Failed(WriteFailure::Path("unsafe_path".into())));
    let plants: [(&str, &dyn Fn()); 4] = [
        ("symlink", &|| symlink(&secret, &staging).unwrap()),
        ("hard link", &|| {
            std::fs::hard_link(&secret, &staging).unwrap()
        }),
        ("foreign owner", &|| {
            std::fs::write(&staging, b"abc").unwrap();
            std::os::unix::fs::chown(&staging, Some(7), Some(7)).unwrap();
        }),
        ("fifo", &|| {
            nix::unistd::mkfifo(&staging, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap()
        }),
    ];
    for (what, plant) in plants {
        ws.write_chunk("f", 0, data.clone(), false).await.unwrap();
        std::fs::remove_file(&staging).unwrap();
        plant();
        assert_eq!(
            ws.write_chunk("f", 3, data.clone(), true).await,
            unsafe_path,
            "{what}"
        );
        assert_eq!(std::fs::read(&secret).unwrap(), b"host file", "{what}");
        std::fs::remove_file(&staging).unwrap();
    }
    symlink(&secret, s.ws().join("link")).unwrap();
    ws.write_chunk("link", 0, data.clone(), true).await.unwrap();
    assert!(!std::fs::symlink_metadata(s.ws().join("link"))
        .unwrap()
        .is_symlink());
    assert_eq!(std::fs::read(&secret).unwrap(), b"host file");
}
