//! End-to-end on a real Docker engine, from inside real session containers: with the Docker
//! backend, a session cannot make the spawner API or `/metrics` answer (the spawner listens on
//! every address here, as in a container), cannot make another session's runnerd answer or keep
//! a connection to it open, and cannot rewrite its own runnerd's allowlist; the spawner still execs
//! in both sessions and a session still reaches a service on the sandbox network (standing in for
//! the egress proxy). The allowlist follows the spawner's configuration across a restart. What the
//! README says a session still reaches — a host service on the bridge's gateway address — is
//! shown, and the README's INPUT rule (on this test's bridge only) is shown to close it.
//! Fails (never skips) without Docker.
mod support;

use hyper::{Method, StatusCode};
use serde_json::json;
use std::process::Command;
use support::docker::{docker, test_image};
use support::proc_net;
use support::spawner::{result, stdout_text, SpawnerProcess};

/// Everything the test creates in Docker, removed on drop.
struct Objects {
    network: String,
    containers: Vec<String>,
    volumes: Vec<String>,
}

impl Drop for Objects {
    fn drop(&mut self) {
        for container in &self.containers {
            docker(&["rm", "-f", "-v", container]);
        }
        support::docker::remove_volumes(&self.volumes);
        support::docker::remove_network(&self.network);
    }
}

/// The README's host rule for one bridge; deleted on drop.
struct InputRule(Vec<String>);

impl InputRule {
    fn insert(bridge: &str) -> InputRule {
        let rule: Vec<String> = ["INPUT", "-i", bridge, "-m", "conntrack", "--ctstate", "NEW"]
            .into_iter()
            .chain(["-j", "DROP"])
            .map(String::from)
            .collect();
        let inserted = Command::new("iptables").arg("-I").args(&rule).status();
        assert!(inserted.is_ok_and(|s| s.success()), "iptables -I {rule:?}");
        InputRule(rule)
    }
}

impl Drop for InputRule {
    fn drop(&mut self) {
        let _ = Command::new("iptables").arg("-D").args(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_reach_neither_the_control_plane_nor_each_other() {
    let image = test_image().to_string();
    let tag = std::process::id();
    let (a, b) = (format!("isoa{tag}"), format!("isob{tag}"));
    let mut objects = Objects {
        network: format!("tale-iso-net-{tag}"),
        containers: vec![format!("tale-sbx-ses-{a}"), format!("tale-sbx-ses-{b}")],
        volumes: vec![
            format!("tale-sbx-ses-{a}-ws"),
            format!("tale-sbx-ses-{b}-ws"),
        ],
    };
    let root = std::env::temp_dir().join(format!("tale-iso-{tag}"));
    let env = vec![
        ("SANDBOX_BACKEND".to_string(), "docker".to_string()),
        ("SANDBOX_RUNTIME_IMAGE".into(), image.clone()),
        ("SANDBOX_EGRESS_NETWORK".into(), objects.network.clone()),
        ("SANDBOX_EGRESS_PROXY".into(), "none".into()),
        ("SANDBOX_CACHE_VOLUMES".into(), "0".into()),
    ];
    // On every address, as a spawner in a container listens: the fence, not the bind, must hold.
    let mut spawner = SpawnerProcess::start_on("0.0.0.0", root.clone(), env).await;
    let c = spawner.client.clone();
    c.create(&a, "iso-org-a").await;
    c.create(&b, "iso-org-b").await;
    let exec = |session: &str, shell: &str| {
        let c = c.clone();
        let path = format!("/v1/sessions/{session}/exec");
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let exec_id = format!(
            "x{}",
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let body = json!({"execId": exec_id, "shell": shell});
        async move {
            let (status, stream) = c.sse(Method::POST, &path, Some(body), &[]).await;
            (status, stream.collect_all().await)
        }
    };
    let ok_exec = |session: &'static str, shell: String| async move {
        let (status, events) = exec(session, &shell).await;
        assert_eq!(status, StatusCode::OK, "{events:?}");
        assert_eq!(result(&events)["exitCode"], 0, "{shell}: {events:?}");
        stdout_text(&events)
    };
    let a: &'static str = Box::leak(a.into_boxed_str());
    let b: &'static str = Box::leak(b.into_boxed_str());

    let inspect = |what: &str, format: &str| docker(&["inspect", "-f", format, what]).1;
    let gateway = inspect(
        &objects.network,
        "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
    );
    let b_ip = inspect(
        &format!("tale-sbx-ses-{b}"),
        &format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            objects.network
        ),
    );
    assert!(!gateway.is_empty() && !b_ip.is_empty(), "{gateway} {b_ip}");

    // A service on the sandbox network (the egress proxy's place): sessions still reach it.
    let service = format!("tale-iso-svc-{tag}");
    objects.containers.push(service.clone());
    assert!(docker(&[
        "run", "-d", "--name", &service, "--network", &objects.network, "--entrypoint", "/bin/sh", &image,
        "-c", "mkdir -p /tmp/www && echo proxy-stand-in > /tmp/www/index.html && exec httpd -f -p 3128 -h /tmp/www",
    ]).0);
    let service_ip = inspect(
        &service,
        &format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            objects.network
        ),
    );

    // The spawner serves its API and /metrics on loopback...
    let metrics = async || {
        use http_body_util::BodyExt;
        let response = c
            .send(c.request(Method::GET, "/metrics", Default::default(), false))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    };
    assert!(!metrics().await.contains("reason=\"session_network\""));
    // ...but to a session, its address on the sandbox network answers nothing.
    let port = spawner.port;
    let probe = |host: &str, port: u16, path: &str| {
        format!("printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {host} {port}; echo rc=$?")
    };
    for path in ["/metrics", "/v1/sessions", "/health"] {
        let seen = ok_exec(a, probe(&gateway, port, path)).await;
        assert!(
            !seen.contains("HTTP/"),
            "{path} must not answer a session: {seen}"
        );
    }
    let metrics_text = metrics().await;
    assert!(
        metrics_text.contains("reason=\"session_network\""),
        "refusals are counted: {metrics_text}"
    );

    // Session B's runnerd closes A's connections before reading: no answer, and while A holds a
    // connection open, B's side of it is not ESTABLISHED (runnerd closed it; a served or merely
    // accepted connection would stay ESTABLISHED until the header timeout).
    let seen = ok_exec(a, probe(&b_ip, 8200, "/healthz")).await;
    assert!(!seen.contains("HTTP/"), "B's runnerd answered A: {seen}");
    let a_ip: std::net::Ipv4Addr = inspect(
        &format!("tale-sbx-ses-{a}"),
        &format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            objects.network
        ),
    )
    .parse()
    .unwrap();
    ok_exec(a, proc_net::hold_connection(&b_ip, 8200, 6)).await;
    let states = support::runnerd::poll(std::time::Duration::from_secs(5), async || {
        let states = proc_net::states(&ok_exec(b, "cat /proc/net/tcp".into()).await, 8200, a_ip);
        (!states.is_empty() && states.iter().all(|s| s != "01")).then_some(states)
    })
    .await;
    assert!(
        states.is_some(),
        "A's held connection stays ESTABLISHED on B's runnerd: {:?}",
        proc_net::states(&ok_exec(b, "cat /proc/net/tcp".into()).await, 8200, a_ip)
    );

    // The allowlist is root's: the exec user cannot widen it.
    let file = ok_exec(
        b,
        "cat /run/tale/allowed-sources; echo 0.0.0.0/0 > /run/tale/allowed-sources 2>/dev/null && echo WROTE; true".into(),
    )
    .await;
    assert!(
        file.contains(&format!("{gateway}/32")) && !file.contains("WROTE"),
        "{file}"
    );

    // The spawner still execs in both; a session still reaches the service on its network.
    assert_eq!(ok_exec(a, "echo alive-a".into()).await, "alive-a\n");
    assert_eq!(ok_exec(b, "echo alive-b".into()).await, "alive-b\n");
    assert_eq!(
        ok_exec(a, format!("wget -qO- http://{service_ip}:3128/")).await,
        "proxy-stand-in\n"
    );

    // A host service listening on every address is reachable through the gateway address (the
    // README says so) until the operator's INPUT rule, applied to this network's bridge, closes it.
    let host_service = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host_service.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in host_service.incoming().flatten() {
            use std::io::Write;
            let _ = (&stream).write_all(b"host-service\n");
        }
    });
    let reach_host = format!("nc -w 3 {gateway} {host_port} </dev/null; true");
    assert_eq!(ok_exec(a, reach_host.clone()).await, "host-service\n");
    let network_id = docker(&["network", "inspect", "-f", "{{.Id}}", &objects.network]).1;
    let bridge = format!("br-{}", &network_id[..12]);
    let rule = InputRule::insert(&bridge);
    let closed = ok_exec(a, reach_host).await;
    drop(rule);
    assert_eq!(closed, "", "the INPUT rule closes the host to the sessions");

    // The allowlist follows the configuration: restarted with control sources that do not hold
    // this spawner's address, the boot rewrites every session's file and runnerd shuts it out;
    // restarted with the default, it is back.
    spawner.env.push((
        "SANDBOX_DOCKER_CONTROL_SOURCES".into(),
        "192.0.2.0/24".into(),
    ));
    spawner.restart().await;
    let (status, events) = exec(a, "echo shut-out").await;
    assert!(
        status != StatusCode::OK || !stdout_text(&events).contains("shut-out"),
        "{status} {events:?}"
    );
    spawner.env.pop();
    spawner.restart().await;
    assert_eq!(ok_exec(a, "echo back".into()).await, "back\n");

    for id in [a, b] {
        let (status, _) = c
            .json(Method::DELETE, &format!("/v1/sessions/{id}"), None)
            .await;
        assert!(status.is_success(), "{status}");
    }
    drop(spawner);
    drop(objects);
    let _ = std::fs::remove_dir_all(&root);
}
