//! End-to-end against the real binary, as a hostile session would act: planted symlinks before a
//! boot, deleting what the exec user can reach, FIFOs behind the files API, a spawn path made
//! impossible, thousands of idle connections, and a request body that never ends.
mod support;

use base64::Engine;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::runnerd::{
    free_port, output, raise_own_nofile, terminal, Client, Options, Runnerd, TOKEN,
};

/// A runnerd started on a workspace the test prepared (the support helper always makes a fresh
/// one), optionally through a wrapper such as `prlimit`.
struct Booted {
    child: Child,
    client: Client,
    port: u16,
    log: PathBuf,
}

impl Booted {
    async fn start(wrapper: &[&str], root: &Path, args: &[String], log: PathBuf) -> Booted {
        let port = free_port();
        let mut argv: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
        argv.extend([
            env!("CARGO_BIN_EXE_tale").to_string(),
            "runnerd".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--workspace-root".into(),
            root.display().to_string(),
        ]);
        argv.extend(args.iter().cloned());
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .env("TALE_RUNNERD_TOKEN", TOKEN)
            .env_remove("TALE_RUNNERD_TOKEN_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let booted = Booted {
            child,
            client: Client::new(port),
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(response) = booted
                .client
                .request(Method::GET, "/readyz", None, false)
                .await
            {
                if response.status() == StatusCode::OK {
                    return booted;
                }
            }
            assert!(
                Instant::now() < deadline,
                "runnerd not ready: {}",
                booted.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tale-hostile-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    let meta = std::fs::metadata(path).unwrap();
    (meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Symlinks the exec user planted at `.home`, `.tale` and every cache path before a boot are
/// refused: the Docker backend's three caches (`pip`, `npm`, `bun` in a shared sticky directory
/// outside the workspace), a cache inside the workspace, and one whose parent directory is the
/// symlink. Nothing outside the workspace changes owner or mode or gets a new entry, and runnerd
/// still comes up.
#[tokio::test(flavor = "multi_thread")]
async fn planted_symlinks_are_not_followed_at_boot() {
    if !is_root() {
        eprintln!("skipped: needs root (runnerd chowns only as root)");
        return;
    }
    let base = scratch("boot");
    let root = base.join("ws");
    std::fs::create_dir_all(root.join(".cache")).unwrap();
    let caches = base.join("caches");
    std::fs::create_dir_all(&caches).unwrap();
    std::fs::set_permissions(&caches, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let plant = |link: PathBuf, name: &str| {
        let victim = base.join(format!("victim-{name}"));
        std::fs::create_dir(&victim).unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(10001), Some(10001)).unwrap();
        victim
    };
    let mut victims = vec![
        plant(root.join(".home"), "home"),
        plant(root.join(".tale"), "tale"),
        plant(root.join(".cache/npm"), "ws-npm"),
        plant(root.join(".cache-link"), "ws-parent"),
    ];
    let mut shared_dirs = vec![root.join(".cache/npm"), root.join(".cache-link/pip")];
    // The caches the Docker backend names (TALE_SHARED_DIRS=/cache/pip:/cache/npm:/cache/bun).
    for name in ["pip", "npm", "bun"] {
        victims.push(plant(caches.join(name), name));
        shared_dirs.push(caches.join(name));
    }
    let before: Vec<_> = victims.iter().map(|v| owner_and_mode(v)).collect();

    let args: Vec<String> = shared_dirs
        .iter()
        .flat_map(|dir| ["--shared-dir".to_string(), dir.display().to_string()])
        .collect();
    let daemon = Booted::start(&[], &root, &args, base.join("runnerd.log")).await;
    let after: Vec<_> = victims.iter().map(|v| owner_and_mode(v)).collect();
    assert_eq!(before, after, "{}", daemon.log());
    assert_eq!(before[0], (0, 0, 0o700));
    for victim in &victims {
        assert_eq!(
            std::fs::read_dir(victim).unwrap().count(),
            0,
            "{victim:?} got an entry"
        );
    }
    let log = daemon.log();
    assert!(log.contains("exec home not prepared"), "{log}");
    assert_eq!(
        log.matches("shared directory not prepared").count(),
        shared_dirs.len(),
        "{log}"
    );
    // The workspace root itself still belongs to the exec user, and execs run.
    assert_eq!(owner_and_mode(&root).0, 10001);
    let events = daemon
        .client
        .exec(json!({"execId": "after-boot", "shell": "id -u", "timeoutMs": 10000}))
        .await;
    assert_eq!(output(&events, "stdout"), b"10001\n");
    drop(daemon);
    std::fs::remove_dir_all(&base).unwrap();
}

/// Output spilled to the disk spool replays whole, and the credential helper keeps answering,
/// after the exec user deleted or renamed everything it can reach (`files/delete [".tale"]`,
/// `rm -rf` of the workspace, an attempt on the socket named in its environment).
#[tokio::test(flavor = "multi_thread")]
async fn runnerd_state_is_out_of_the_exec_users_reach() {
    let daemon = Runnerd::start(Options::default()).await;
    let c = &daemon.client;
    let bin_dir = daemon.root.parent().unwrap().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_tale"),
        bin_dir.join("git-credential-tale"),
    )
    .unwrap();
    let (status, _) = c
        .json(
            Method::PUT,
            "/credentials/git",
            Some(json!({"host": "git.example", "username": "u", "password": "pw-0042"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // 2 MiB of output: far beyond the 256 KiB in-memory tail, so most of it is in the spool.
    let big = "head -c 2097152 /dev/zero | tr '\\0' x";
    let first = c
        .exec(json!({"execId": "before", "shell": big, "timeoutMs": 30000}))
        .await;
    assert_eq!(output(&first, "stdout").len(), 2 << 20);

    let (_, reply) = c
        .json(
            Method::POST,
            "/files/delete",
            Some(json!({"paths": [".tale"]})),
        )
        .await;
    assert_eq!(reply["skipped"], json!([]));
    let attack = "socket=$TALE_CREDENTIAL_SOCKET; \
        rm -rf \"$socket\" 2>/dev/null; mv \"$socket\" /tmp/x 2>/dev/null; \
        rm -rf \"$(dirname \"$socket\")\" 2>/dev/null; \
        cd / && rm -rf \"$OLDPWD\"/.[!.]* \"$OLDPWD\"/* 2>/dev/null; \
        case \"$socket\" in \"$OLDPWD\"/*) echo inside;; *) echo outside;; esac";
    let events = c
        .exec(json!({"execId": "attack", "shell": attack, "timeoutMs": 10000}))
        .await;
    assert_eq!(output(&events, "stdout"), b"outside\n", "{events:?}");

    let second = c
        .exec(json!({"execId": "after", "shell": big, "timeoutMs": 30000}))
        .await;
    assert_eq!(output(&second, "stdout").len(), 2 << 20);
    for id in ["before", "after"] {
        let replay = c.attach(id, 0).await.unwrap().collect_all().await;
        assert!(
            replay.iter().all(|e| e["t"] != "gap"),
            "{id}: replay has a gap"
        );
        assert_eq!(output(&replay, "stdout").len(), 2 << 20, "{id}");
        assert_eq!(terminal(&replay)["exitCode"], 0);
    }
    let helper = format!(
        "printf 'protocol=https\\nhost=git.example\\n\\n' | {}/git-credential-tale get",
        bin_dir.display()
    );
    let events = c
        .exec(json!({"execId": "helper", "shell": helper, "timeoutMs": 10000}))
        .await;
    assert_eq!(
        String::from_utf8_lossy(&output(&events, "stdout")),
        "username=u\npassword=pw-0042\n"
    );
}

/// Ten reads of a FIFO (more than the blocking threads) answer 400 `not_a_regular_file` at once;
/// staging over a FIFO is refused; listing works; execs, staging and `/healthz` are unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn fifos_never_wedge_the_daemon() {
    let daemon = Runnerd::start(Options::default()).await;
    let c = &daemon.client;
    let events = c
        .exec(json!({"execId": "mkfifo", "shell": "mkfifo pipe", "timeoutMs": 10000}))
        .await;
    assert_eq!(terminal(&events)["exitCode"], 0);
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let c = c.clone();
        reads.spawn(async move { c.raw(Method::GET, "/fs/read?path=pipe", None, true).await });
    }
    let answers = tokio::time::timeout(Duration::from_secs(10), reads.join_all())
        .await
        .expect("FIFO reads must not block");
    for (status, body) in answers {
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "not_a_regular_file");
    }
    let (status, listing) = c.json(Method::GET, "/fs/list", None).await;
    assert_eq!(status, StatusCode::OK);
    let pipe = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "pipe")
        .unwrap();
    assert_eq!(pipe["type"], "other");
    let content = base64::engine::general_purpose::STANDARD.encode(b"data");
    let (_, reply) = c
        .json(
            Method::POST,
            "/files/stage",
            Some(json!({"files": [
                {"path": "pipe", "contentBase64": content},
                {"path": "ok.txt", "contentBase64": content},
            ]})),
        )
        .await;
    assert_eq!(
        reply,
        json!({"staged": [{"path": "ok.txt", "bytes": 4}],
               "skipped": [{"path": "pipe", "reason": "not_a_regular_file"}]})
    );
    let events = c
        .exec(json!({"execId": "after", "shell": "echo fine", "timeoutMs": 10000}))
        .await;
    assert_eq!(output(&events, "stdout"), b"fine\n");
    let (status, _) = c.json(Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
}

/// A unix socket and (as root) a character device in the workspace are refused like a FIFO:
/// `fs/read` answers 400 `not_a_regular_file` (a socket's open fails before any `fstat`, a device
/// would hand out endless bytes), staging over them is skipped, listing shows them as `other`,
/// and deleting them just removes the names.
#[tokio::test(flavor = "multi_thread")]
async fn sockets_and_devices_are_not_files() {
    let daemon = Runnerd::start(Options::default()).await;
    let c = &daemon.client;
    let _socket = std::os::unix::net::UnixListener::bind(daemon.root.join("sock")).unwrap();
    let mut specials = vec!["sock"];
    if is_root() {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        // /dev/zero's numbers: reading it would never end.
        mknod(
            &daemon.root.join("zero"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(1, 5),
        )
        .unwrap();
        specials.push("zero");
    }
    let content = base64::engine::general_purpose::STANDARD.encode(b"data");
    for name in &specials {
        let (status, body) = c
            .raw(Method::GET, &format!("/fs/read?path={name}"), None, true)
            .await;
        assert_eq!(
            (status, body["error"].clone()),
            (StatusCode::BAD_REQUEST, json!("not_a_regular_file")),
            "{name}: {body}"
        );
        let (_, reply) = c
            .json(
                Method::POST,
                "/files/stage",
                Some(json!({"files": [{"path": name, "contentBase64": content}]})),
            )
            .await;
        assert_eq!(
            reply,
            json!({"staged": [], "skipped": [{"path": name, "reason": "not_a_regular_file"}]})
        );
    }
    let (_, listing) = c.json(Method::GET, "/fs/list", None).await;
    for name in &specials {
        let entry = listing["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == *name)
            .unwrap_or_else(|| panic!("{name} listed: {listing}"));
        assert_eq!(entry["type"], "other", "{name}");
    }
    let (_, reply) = c
        .json(
            Method::POST,
            "/files/delete",
            Some(json!({"paths": specials})),
        )
        .await;
    assert_eq!(reply, json!({"deleted": specials, "skipped": []}));
    for name in &specials {
        assert!(
            std::fs::symlink_metadata(daemon.root.join(name)).is_err(),
            "{name}"
        );
    }
}

/// With the exec user over its process limit no exec can start: `/healthz` says so (503 and the
/// reason) instead of 200, and turns healthy again once the processes are gone.
#[tokio::test(flavor = "multi_thread")]
async fn healthz_is_unhealthy_while_spawning_is_impossible() {
    if !is_root() {
        eprintln!("skipped: needs root (a distinct exec user)");
        return;
    }
    let base = scratch("health");
    let root = base.join("ws");
    // A uid no other test (or earlier run) uses: RLIMIT_NPROC counts every process of the uid.
    let uid = 40000 + std::process::id() % 20000;
    let daemon = Booted::start(
        &["prlimit", "--nproc=1:1", "--"],
        &root,
        &["--exec-user".into(), format!("{uid}:{uid}")],
        base.join("runnerd.log"),
    )
    .await;
    let c = &daemon.client;
    let (status, report) = c.json(Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["ok"], true);
    // setuid to a user already at its limit is allowed once (the kernel refuses the exec only
    // beyond it): two sleeps put the user over the limit, after which no exec can start.
    let mut holders = Vec::new();
    for id in ["hold-1", "hold-2"] {
        let mut stream = c
            .exec_stream(json!({"execId": id, "command": ["sleep", "300"], "timeoutMs": 120000}))
            .await;
        assert_eq!(stream.next().await.unwrap()["t"], "start");
        holders.push(stream);
    }
    let unhealthy = poll_health(c, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(unhealthy["ok"], false);
    assert_eq!(unhealthy["liveExecs"], 2);
    let reason = unhealthy["unhealthy"].as_str().unwrap();
    assert!(reason.starts_with("spawn failed"), "{unhealthy}");
    let events = c
        .exec(json!({"execId": "refused", "command": ["true"], "timeoutMs": 10000}))
        .await;
    assert_eq!(terminal(&events)["t"], "fail", "the probe told the truth");
    for id in ["hold-1", "hold-2"] {
        let (_, cancel) = c
            .json(Method::POST, &format!("/execs/{id}/cancel"), None)
            .await;
        assert_eq!(cancel["killed"], true);
    }
    for holder in holders {
        terminal(&holder.collect_all().await);
    }
    let healthy = poll_health(c, StatusCode::OK).await;
    assert_eq!(healthy["ok"], true);
    drop(daemon);
    std::fs::remove_dir_all(&base).unwrap();
}

async fn poll_health(c: &Client, want: StatusCode) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = c.json(Method::GET, "/healthz", None).await;
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "healthz stayed {status}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 6000 idle connections held from one address (another session's) while runnerd started with a
/// soft limit of 1024: execs still spawn (and keep the inherited soft limit), `/healthz` answers,
/// and connections that authenticated are not held to the per-source cap.
#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_cannot_starve_spawning() {
    let hard = raise_own_nofile();
    if hard < 7000 {
        eprintln!("skipped: hard descriptor limit {hard} is too low to hold 6000 connections");
        return;
    }
    let base = scratch("conns");
    let root = base.join("ws");
    let daemon = Booted::start(
        &["prlimit", &format!("--nofile=1024:{hard}"), "--"],
        &root,
        &[],
        base.join("runnerd.log"),
    )
    .await;
    let c = &daemon.client;
    let port = daemon.port;
    // Authenticated keep-alive connections first: more than the per-source cap, all served.
    let authenticated = tokio::task::spawn_blocking(move || {
        (0..100)
            .map(|_| {
                let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                write!(
                    stream,
                    "GET /healthz HTTP/1.1\r\nhost: x\r\nx-tale-runnerd-token: {TOKEN}\r\n\r\n"
                )
                .unwrap();
                let mut head = [0u8; 12];
                stream.read_exact(&mut head).unwrap();
                assert_eq!(&head, b"HTTP/1.1 200");
                stream
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    // Another session's address: every loopback address reaches runnerd's listener. Opened in
    // concurrent batches, each connect bounded: a runnerd that stops accepting (out of
    // descriptors) leaves them hanging in a full backlog.
    let target: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut idle = Vec::with_capacity(6000);
    for _ in 0..12 {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..500 {
            batch.spawn(async move {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
                tokio::time::timeout(Duration::from_secs(5), socket.connect(target)).await
            });
        }
        for connected in batch.join_all().await {
            if let Ok(Ok(stream)) = connected {
                idle.push(stream);
            }
        }
    }
    assert_eq!(idle.len(), 6000, "runnerd kept accepting: {}", daemon.log());
    for i in 0..5 {
        let events = c
            .exec(json!({"execId": format!("while-held-{i}"), "shell": "ulimit -Sn", "timeoutMs": 10000}))
            .await;
        assert_eq!(
            output(&events, "stdout"),
            b"1024\n",
            "{events:?}\n{}",
            daemon.log()
        );
    }
    let (status, _) = c.json(Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    drop((idle, authenticated));
    drop(daemon);
    std::fs::remove_dir_all(&base).unwrap();
}

/// An authenticated request whose chunked body never ends gets 408 `request_timeout` after the
/// body read timeout, and its connection is closed.
#[tokio::test(flavor = "multi_thread")]
async fn never_ending_body_is_closed() {
    let daemon = Runnerd::start(Options {
        args: vec!["--body-read-timeout-ms".into(), "1000".into()],
        ..Default::default()
    })
    .await;
    let port = daemon.port;
    let reply = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        write!(
            stream,
            "POST /env HTTP/1.1\r\nhost: x\r\nx-tale-runnerd-token: {TOKEN}\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{{\"set\r\n"
        )
        .unwrap();
        let started = Instant::now();
        let mut reply = Vec::new();
        // Read to end of stream: succeeds only if runnerd closes the connection.
        stream.read_to_end(&mut reply).unwrap();
        (String::from_utf8_lossy(&reply).into_owned(), started.elapsed())
    })
    .await
    .unwrap();
    let (reply, took) = reply;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("request_timeout"), "{reply}");
    assert!(took < Duration::from_secs(10), "closed after {took:?}");
}

/// SIGTERM: a live exec's stream still ends with its terminal event, an idle connection is
/// closed, the daemon exits 0, and its state directory (credential socket, spool) is gone.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_drains_and_removes_the_state_dir() {
    let daemon = Runnerd::start(Options::default()).await;
    let c = daemon.client.clone();
    let events = c
        .exec(
            json!({"execId": "where", "shell": "echo $TALE_CREDENTIAL_SOCKET", "timeoutMs": 10000}),
        )
        .await;
    let socket = PathBuf::from(
        String::from_utf8(output(&events, "stdout"))
            .unwrap()
            .trim()
            .to_string(),
    );
    let state = socket.parent().unwrap().to_path_buf();
    assert!(!socket.starts_with(&daemon.root), "{socket:?}");
    assert!(std::fs::symlink_metadata(&socket).is_ok(), "{socket:?}");
    let mut stream = c
        .exec_stream(json!({"execId": "long", "command": ["sleep", "300"], "timeoutMs": 600000}))
        .await;
    assert_eq!(stream.next().await.unwrap()["t"], "start");
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let events = tokio::time::timeout(Duration::from_secs(20), stream.collect_all())
        .await
        .expect("the stream ends at shutdown");
    assert_eq!(terminal(&events)["t"], "exit");
    let (status, daemon) = tokio::task::spawn_blocking(move || {
        let mut daemon = daemon;
        (daemon.wait_exit(Duration::from_secs(20)), daemon)
    })
    .await
    .unwrap();
    assert!(status.is_some_and(|s| s.success()), "{}", daemon.log());
    assert!(!state.exists(), "state dir {state:?} left behind");
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    // Closed either way: EOF when runnerd had accepted it, a reset when it was still in the listen
    // backlog as the listener closed. Only a read that times out means it was left open.
    let read = idle.read_to_end(&mut rest);
    assert!(
        !matches!(&read, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "idle connection left open: {read:?}"
    );
}
