//! `coordination.k8s.io/v1` Leases: stored like every other object (create answers 409
//! AlreadyExists for a taken name, PUT with a stale `metadata.resourceVersion` 409 Conflict, DELETE
//! honours `preconditions`), listed by label, and counted for tests.
use super::FakeKube;
use serde_json::Value;
use std::collections::BTreeMap;

/// The API group of Leases.
pub const GROUP: &str = "coordination.k8s.io";

impl FakeKube {
    /// Every stored Lease, by name.
    pub fn leases(&self) -> BTreeMap<String, Value> {
        self.objects("leases")
    }

    /// Names of the Leases whose `tale.dev/session-id` annotation is `session_id`.
    pub fn leases_of(&self, session_id: &str) -> Vec<String> {
        self.leases()
            .into_iter()
            .filter(|(_, lease)| {
                lease["metadata"]["annotations"]["tale.dev/session-id"].as_str() == Some(session_id)
            })
            .map(|(name, _)| name)
            .collect()
    }
}

impl FakeKube {
    /// Removes every stored Lease (as if made by a release that had none).
    pub fn remove_leases(&self) {
        super::lock(&self.state)
            .objects
            .retain(|(resource, _, _), _| resource != "leases");
    }

    /// One authorized JSON request to the fake, as a client would send it: (status, JSON body).
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.call_as(method, path, "application/json", body).await
    }

    /// Like [`call`](Self::call) with the given content type (a patch type, say).
    pub async fn call_as(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {}\r\n\
             content-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            super::FAKE_TOKEN,
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_end(&mut response),
        )
        .await
        .expect("the fake answers")
        .unwrap();
        let text = String::from_utf8(response).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }
}
