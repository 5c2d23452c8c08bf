//! Distinct sessions never share a container or a workspace (real Docker engine, real spawner):
//! the colliding pair of the old naming scheme — a long id and the 16-hex id equal to its SHA-1
//! prefix — with the long id's session made the way the previous release made it (old name, old
//! labels). The new spawner adopts and resumes it under its old name, refuses the short id with
//! 409 `owner_mismatch` instead of handing it the long id's workspace, never deletes the other's
//! objects, and refuses another organization's create of an id whose workspace is kept.
mod support;

use hyper::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;
use support::docker::{docker, docker_spawner, network_name, test_image, Cleanup};
use support::runnerd::poll;
use support::spawner::SANDBOX_TOKEN;
use tale::modes::spawner::backend::names::{legacy_base_name, NameRules};
use tale::modes::spawner::runnerd_client::RunnerdClient;

fn volume_exists(name: &str) -> bool {
    docker(&["volume", "inspect", name]).0
}

/// Makes session `id` of `org` exactly as the previous release did, under `base`: a workspace
/// volume labelled with the session id only, a file of the session's in it, and a running
/// container with the old labels. Returns once its runnerd answers (and records it as seeded:
/// the test image's runnerd stands in for the old one, whose missing seed record counts as seeded).
async fn make_legacy_session(network: &str, base: &str, id: &str, org: &str, secret: &str) {
    let volume = format!("{base}-ws");
    assert!(
        docker(&[
            "volume",
            "create",
            "--label",
            "tale.sandbox-workspace=1",
            "--label",
            &format!("tale.session={id}"),
            &volume,
        ])
        .0
    );
    assert!(
        docker(&[
            "run",
            "--rm",
            "--entrypoint",
            "/bin/sh",
            "-v",
            &format!("{volume}:/workspace"),
            test_image(),
            "-c",
            &format!("echo {secret} > /workspace/secret.txt && chmod 644 /workspace/secret.txt"),
        ])
        .0
    );
    let token = tale::shared::hmac::derive_runnerd_token(SANDBOX_TOKEN.as_bytes(), id);
    let digest = tale::shared::protocol::runnerd::token_digest_hex(token.as_bytes());
    let created = tale::shared::clock::now_ms().to_string();
    let labels = [
        "tale.sandbox-session=1".to_string(),
        format!("tale.session={id}"),
        format!("tale.org={org}"),
        "tale.profile=default".into(),
        format!("tale.created={created}"),
        "tale.ttl-ms=3600000".into(),
        "tale.idle-ms=600000".into(),
    ];
    let mut args: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        base.into(),
        "--network".into(),
        network.into(),
    ];
    for label in labels {
        args.extend(["--label".into(), label]);
    }
    for env in [
        format!("TALE_RUNNERD_TOKEN_SHA256={digest}"),
        "TALE_WORKSPACE_ROOT=/workspace".into(),
        "TALE_STATE_DIR=/run/tale".into(),
        "TALE_EXEC_USER=65534:65534".into(),
    ] {
        args.extend(["-e".into(), env]);
    }
    args.extend([
        "--mount".into(),
        format!("type=volume,src={volume},dst=/workspace"),
        "--mount".into(),
        "type=volume,dst=/run/tale".into(),
        test_image().into(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(docker(&refs).0, "legacy container started");
    let (_, ip) = docker(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        base,
    ]);
    let runnerd = RunnerdClient::new(&format!("http://{ip}:8200"), &token);
    let marked = poll(Duration::from_secs(30), async || {
        runnerd.mark_seeded(&"0".repeat(64)).await.ok().flatten()
    })
    .await;
    assert!(marked.is_some(), "the legacy session's runnerd answers");
}

/// The colliding pair: adopted and resumed under the old name, label-checked, never shared.
#[tokio::test(flavor = "multi_thread")]
async fn colliding_ids_never_share_a_workspace() {
    let long = format!("{}{}", "collide".repeat(8), std::process::id());
    let long = format!("{long:L<64}");
    let shared = legacy_base_name(&long, NameRules::Docker);
    let short = shared.strip_prefix("tale-sbx-ses-").unwrap().to_owned();
    assert_eq!(
        legacy_base_name(&short, NameRules::Docker),
        shared,
        "the old names collide"
    );
    let network = network_name();
    let id = format!("orgcheck{}", std::process::id());
    let _cleanup = Cleanup {
        names: vec![
            shared.clone(),
            format!("tale-sbx-ses-{id}"),
            tale::modes::spawner::backend::names::session_base_name(&long, NameRules::Docker),
        ],
        network: network.clone(),
    };
    assert!(docker(&["network", "create", "--internal", &network]).0);

    // Before the upgrade: org A's long-id session, made under the old (shared) name.
    make_legacy_session(&network, &shared, &long, "orga", "A-secret").await;
    let spawner = docker_spawner(&network, &[]).await;
    let c = &spawner.client;

    // Adopted at boot under its old name, labels checked, usable.
    let (status, got) = c
        .json(Method::GET, &format!("/v1/sessions/{long}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{got}\n{}", spawner.log());
    assert_eq!(got["session"]["organizationId"], "orga");
    assert_eq!(got["session"]["state"], "ready");
    assert_eq!(
        c.exec_stdout(&long, "a1", "cat secret.txt").await,
        "A-secret\n"
    );

    // Org B's short id maps to the same old name: refused loudly, nothing of A's touched.
    let create_short = json!({"sessionId": short, "organizationId": "orgb"});
    let mismatch = (StatusCode::CONFLICT, "owner_mismatch".to_string());
    assert_eq!(c.create_with(&create_short).await, mismatch);
    let (_, body) = c
        .json(Method::POST, "/v1/sessions", Some(create_short.clone()))
        .await;
    assert!(
        !body["message"].as_str().unwrap().contains(&long),
        "the owner is not revealed: {body}"
    );
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &shared]).1,
        "true"
    );

    // A's session stops (compute removed, workspace kept): B still cannot take the workspace,
    // nor delete it.
    assert!(docker(&["rm", "-f", &shared]).0);
    assert_eq!(
        c.json(Method::GET, &format!("/v1/sessions/{long}"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(c.create_with(&create_short).await, mismatch);
    assert_eq!(c.destroy(&short).await, (StatusCode::OK, false));
    assert!(volume_exists(&format!("{shared}-ws")), "A's workspace kept");

    // A resumes on its old workspace (new container name, old volume).
    let create_long = json!({"sessionId": long, "organizationId": "orga"});
    assert_eq!(
        c.create_with(&create_long).await,
        (StatusCode::CREATED, String::new()),
        "{}",
        spawner.log()
    );
    assert_eq!(
        c.exec_stdout(&long, "a2", "cat secret.txt").await,
        "A-secret\n"
    );
    let (_, names) = docker(&[
        "ps",
        "--filter",
        &format!("label=tale.session={long}"),
        "--format",
        "{{.Names}}",
    ]);
    assert!(
        names.starts_with("tale-sbx-hash-"),
        "resumed under the new name: {names}"
    );
    assert_eq!(c.create_with(&create_short).await, mismatch);

    // A destroys: its objects (new container, old volume) go; B's short id is then free and new.
    assert_eq!(c.destroy(&long).await, (StatusCode::OK, true));
    assert!(!volume_exists(&format!("{shared}-ws")));
    assert_eq!(
        c.create_with(&create_short).await,
        (StatusCode::CREATED, String::new()),
        "{}",
        spawner.log()
    );
    // A fresh workspace: nothing of A's (a quota'd volume is an ext4 filesystem: `lost+found`).
    assert_eq!(
        c.exec_stdout(&short, "b1", "ls")
            .await
            .replace("lost+found\n", ""),
        ""
    );
    assert_eq!(c.destroy(&short).await, (StatusCode::OK, true));

    // The same id from another organization, while the first one's workspace is kept: refused.
    c.create(&id, "orga").await;
    c.exec_stdout(&id, "w", "echo mine > mine.txt").await;
    assert!(docker(&["rm", "-f", &format!("tale-sbx-ses-{id}")]).0);
    assert_eq!(
        c.json(Method::GET, &format!("/v1/sessions/{id}"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.create_with(&json!({"sessionId": id, "organizationId": "orgb"}))
            .await,
        mismatch
    );
    c.create(&id, "orga").await;
    assert_eq!(c.exec_stdout(&id, "r", "cat mine.txt").await, "mine\n");
    assert_eq!(c.destroy(&id).await, (StatusCode::OK, true));
    drop(spawner);
}
