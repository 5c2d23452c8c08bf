//! Renders tinyproxy's configuration (Debian's tinyproxy 1.11).
//!
//! Open mode (no allowlist) renders **no** `Filter` directive at all: tinyproxy treats an empty
//! filter file as deny-all and exits when the file is missing. Allowlist mode renders
//! `FilterType ere`, `FilterCaseSensitive No`, `FilterDefaultDeny Yes` and a filter file of anchored
//! patterns (see [`super::allowlist`]). `ConnectPort 443` limits CONNECT; plain-HTTP requests are
//! bounded by the same host filter, and their destination ports by the firewall (80 and 443 only).
use super::allowlist::{filter_patterns, AllowEntry};
use std::path::Path;

/// Settings of the rendered configuration.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub listen: String,
    pub port: u16,
    pub max_clients: u32,
    /// Client networks allowed to use the proxy.
    pub allow_clients: Vec<String>,
    /// Run as nobody (only when started as root).
    pub drop_to_nobody: bool,
}

/// Default client ACL: loopback and the private ranges Docker networks use.
pub const DEFAULT_ALLOWED_CLIENTS: &[&str] = &[
    "127.0.0.1",
    "::1",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
];
/// Default `MaxClients`.
pub const DEFAULT_MAX_CLIENTS: u32 = 2000;
/// Default proxy port.
pub const DEFAULT_PROXY_PORT: u16 = 3128;

/// The configuration text; `filter_file` is where the allowlist was written (allowlist mode).
pub fn render_config(
    settings: &ProxySettings,
    filter_file: Option<&Path>,
    pid_file: &Path,
) -> String {
    let mut out = String::new();
    out.push_str("# Rendered by `tale egress-proxy render`; do not edit.\n");
    if settings.drop_to_nobody {
        out.push_str("User nobody\nGroup nogroup\n");
    }
    out.push_str(&format!(
        "Port {}\nListen {}\nTimeout 600\n",
        settings.port, settings.listen
    ));
    out.push_str("DefaultErrorFile \"/usr/share/tinyproxy/default.html\"\n");
    out.push_str("StatFile \"/usr/share/tinyproxy/stats.html\"\n");
    out.push_str("# Notice, not Info: Info logs full URLs, query-string secrets included.\nLogLevel Notice\n");
    out.push_str(&format!("PidFile \"{}\"\n", pid_file.display()));
    out.push_str(&format!("MaxClients {}\n", settings.max_clients));
    out.push_str("DisableViaHeader Yes\n");
    out.push_str("ConnectPort 443\n");
    match filter_file {
        Some(file) => {
            out.push_str(
                "# Allowlist mode: only the listed host names, compared case-insensitively.\n",
            );
            out.push_str(&format!(
                "FilterType ere\nFilterCaseSensitive No\nFilterDefaultDeny Yes\nFilterURLs Off\nFilter \"{}\"\n",
                file.display()
            ));
        }
        None => out.push_str(
            "# Open mode: no Filter directive (an empty filter file would deny everything).\n",
        ),
    }
    for client in &settings.allow_clients {
        out.push_str(&format!("Allow {client}\n"));
    }
    out
}

/// The filter file text for an allowlist.
pub fn render_filter(entries: &[AllowEntry]) -> String {
    let mut text = filter_patterns(entries).join("\n");
    text.push('\n');
    text
}
