//! End-to-end: workspace file routes over HTTP, including a symlink an exec plants to reach the host.
mod support;

use hyper::{Method, StatusCode};
use serde_json::json;
use support::runnerd::{terminal, Options, Runnerd};

/// Stage, list, read and delete round-trip; staged files belong to the exec user.
#[tokio::test(flavor = "multi_thread")]
async fn stage_list_read_delete() {
    let daemon = Runnerd::start(Options::default()).await;
    let c = &daemon.client;
    let content = base64_simd::STANDARD.encode_to_string(b"print('hi')\n");
    let (status, reply) = c
        .json(
            Method::POST,
            "/files/stage",
            Some(json!({"files": [{"path": "src/app.py", "contentBase64": content}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        reply,
        json!({"staged": [{"path": "src/app.py", "bytes": 12}], "skipped": []})
    );
    // The exec user can edit what was staged.
    let events = c.exec(json!({"execId": "edit", "shell": "echo more >> src/app.py && id -u", "timeoutMs": 10000})).await;
    assert_eq!(terminal(&events)["exitCode"], 0);
    let (status, listing) = c.json(Method::GET, "/fs/list?path=src", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listing["entries"][0]["name"], "app.py");
    assert_eq!(listing["entries"][0]["type"], "file");
    assert_eq!(listing["entries"][0]["size"], 17);
    let response = c
        .request(Method::GET, "/fs/read?path=src%2Fapp.py", None, true)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    use http_body_util::BodyExt;
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&bytes[..], b"print('hi')\nmore\n");
    let (_, reply) = c
        .json(
            Method::POST,
            "/files/delete",
            Some(json!({"paths": ["src", "nope"]})),
        )
        .await;
    assert_eq!(reply, json!({"deleted": ["src", "nope"], "skipped": []}));
    assert_eq!(
        c.json(Method::GET, "/fs/list?path=src", None).await,
        (StatusCode::NOT_FOUND, json!({"error": "not_found"}))
    );
    assert_eq!(
        c.raw(Method::GET, "/fs/read?path=missing", None, true)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

/// A symlink planted by an exec cannot redirect stage, delete, list or read outside the workspace.
#[tokio::test(flavor = "multi_thread")]
async fn planted_symlinks_do_not_escape() {
    let daemon = Runnerd::start(Options::default()).await;
    let c = &daemon.client;
    let outside = daemon.root.parent().unwrap().join("host-dir");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"host").unwrap();
    let events = c
        .exec(json!({"execId": "plant", "shell": format!("ln -s {} escape && ln -s {}/keep keep-link", outside.display(), outside.display()), "timeoutMs": 10000}))
        .await;
    assert_eq!(terminal(&events)["exitCode"], 0);
    let content = base64_simd::STANDARD.encode_to_string(b"pwned");
    let (_, reply) = c
        .json(
            Method::POST,
            "/files/stage",
            Some(json!({"files": [
                {"path": "escape/new", "contentBase64": content},
                {"path": "../host-dir/new", "contentBase64": content},
            ]})),
        )
        .await;
    assert_eq!(reply["staged"], json!([]));
    assert_eq!(
        reply["skipped"][0],
        json!({"path": "escape/new", "reason": "unsafe_path"})
    );
    assert_eq!(
        reply["skipped"][1],
        json!({"path": "../host-dir/new", "reason": "unsafe_path"})
    );
    let (_, reply) = c
        .json(
            Method::POST,
            "/files/delete",
            Some(json!({"paths": ["escape/keep", "keep-link"]})),
        )
        .await;
    assert_eq!(
        reply["skipped"],
        json!([{"path": "escape/keep", "reason": "unsafe_path"}])
    );
    assert_eq!(reply["deleted"], json!(["keep-link"]));
    assert_eq!(
        c.raw(Method::GET, "/fs/list?path=escape", None, true)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.raw(Method::GET, "/fs/read?path=escape%2Fkeep", None, true)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["keep"]);
    assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"host");
    std::fs::remove_dir_all(&outside).unwrap();
}
