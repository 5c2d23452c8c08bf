//! The session container's create body: image, hardening, limits, labels, mounts, environment.
use super::*;

impl DockerBackend {
    pub(super) fn container_body(
        &self,
        spec: &SessionSpec,
        volume: &str,
        network_id: &str,
    ) -> ContainerCreateBody {
        let r = &spec.resources;
        let labels = self.with_stack(HashMap::from([
            (SESSION_LABEL.to_string(), "1".to_string()),
            ("tale.session".into(), spec.session_id.clone()),
            ("tale.org".into(), spec.organization_id.clone()),
            ("tale.profile".into(), spec.profile.clone()),
            ("tale.created".into(), spec.created_at_ms.to_string()),
            ("tale.ttl-ms".into(), spec.ttl_ms.to_string()),
            ("tale.idle-ms".into(), spec.idle_timeout_ms.to_string()),
            (SEED_RECORD_LABEL.into(), "1".into()),
        ]));
        let mut env = vec![
            // Only the token's digest enters the container: runnerd compares digests, so neither
            // `docker inspect` nor root inside the session ever sees the token itself.
            format!(
                "{}={}",
                runnerd_protocol::TOKEN_SHA256_ENV,
                runnerd_protocol::token_digest_hex(spec.runnerd_token.as_bytes())
            ),
            format!("TALE_WORKSPACE_ROOT={WORKSPACE_PATH}"),
            format!("TALE_STATE_DIR={RUNNERD_STATE_PATH}"),
            format!("TALE_EXEC_USER={}:{}", r.exec_user.0, r.exec_user.1),
            "PIP_CACHE_DIR=/cache/pip".into(),
            "UV_CACHE_DIR=/cache/pip".into(),
            "NPM_CONFIG_CACHE=/cache/npm".into(),
            "BUN_INSTALL_CACHE_DIR=/cache/bun".into(),
        ];
        // runnerd (root) reads its TLS key at boot; execs never see it (see `runnerd_tls_env`).
        env.extend(
            super::super::runnerd_tls_env(spec)
                .into_iter()
                .map(|(name, value)| format!("{name}={value}")),
        );
        if let Some(proxy) = &self.config.egress_proxy {
            for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                env.push(format!("{name}={proxy}"));
            }
            env.push(format!("NO_PROXY={}", self.config.no_proxy));
            env.push(format!("no_proxy={}", self.config.no_proxy));
        }
        let mut mounts = vec![
            Mount {
                target: Some(WORKSPACE_PATH.into()),
                source: Some(volume.to_owned()),
                typ: Some(MountType::VOLUME),
                ..Default::default()
            },
            // runnerd's own state (journal spool, credential socket) on disk, root-owned, out of
            // the exec user's reach; the root filesystem is read-only and /tmp is a small tmpfs the
            // exec user can fill. Anonymous: removed with the container.
            Mount {
                target: Some(RUNNERD_STATE_PATH.into()),
                typ: Some(MountType::VOLUME),
                ..Default::default()
            },
        ];
        if let Some(prefixes) = &self.config.cache_volume_prefixes {
            env.push("TALE_SHARED_DIRS=/cache/pip:/cache/npm:/cache/bun".into());
            for (prefix, target) in prefixes
                .iter()
                .zip(["/cache/pip", "/cache/npm", "/cache/bun"])
            {
                mounts.push(Mount {
                    target: Some(target.into()),
                    source: Some(self.cache_volume(prefix, &spec.organization_id)),
                    typ: Some(MountType::VOLUME),
                    ..Default::default()
                });
            }
        }
        let ulimit = |name: &str, soft: u64, hard: u64| ResourcesUlimits {
            name: Some(name.into()),
            soft: Some(soft as i64),
            hard: Some(hard as i64),
        };
        let host_config = HostConfig {
            network_mode: Some(network_id.to_owned()),
            runtime: self.config.runtime.clone(),
            cap_drop: self
                .config
                .drop_all_capabilities
                .then(|| vec!["ALL".into()]),
            cap_add: self.config.drop_all_capabilities.then(|| {
                [
                    "CHOWN",
                    "DAC_OVERRIDE",
                    "FOWNER",
                    "KILL",
                    "SETUID",
                    "SETGID",
                ]
                .map(String::from)
                .to_vec()
            }),
            security_opt: self
                .config
                .no_new_privileges
                .then(|| vec!["no-new-privileges".into()]),
            readonly_rootfs: Some(self.config.read_only_rootfs),
            tmpfs: Some(HashMap::from([(
                "/tmp".into(),
                format!("rw,exec,nosuid,nodev,size={}", r.tmp_bytes),
            )])),
            shm_size: Some(r.shm_bytes as i64),
            memory: Some(r.memory_bytes as i64),
            memory_swap: Some(r.memory_bytes as i64),
            nano_cpus: Some((r.cpus * 1e9) as i64),
            pids_limit: Some(r.pids_limit),
            ulimits: Some(vec![
                ulimit("nofile", r.nofile.0, r.nofile.1),
                ulimit("fsize", r.fsize_bytes, r.fsize_bytes),
                ulimit("core", 0, 0),
            ]),
            oom_score_adj: Some(500),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".into(), "10m".into()),
                    ("max-file".into(), "1".into()),
                ])),
            }),
            mounts: Some(mounts),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(self.config.image.clone()),
            // runnerd starts as root only to drop every exec to the exec user.
            user: Some("0:0".into()),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        }
    }
}
