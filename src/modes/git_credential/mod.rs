//! `tale git-credential get|store|erase` (also reachable as `git-credential-tale`): a git credential
//! helper speaking git's helper protocol. `get` asks runnerd, over the unix socket named by
//! `TALE_CREDENTIAL_SOCKET`, for the credential of the host git names, and prints it only when one
//! is granted; `store` and `erase` are no-ops (runnerd is the only store). It never fails loudly:
//! printing nothing makes git fall through to its next helper, then fail without leaking anything.
use crate::shared::protocol::runnerd::CREDENTIAL_SOCKET_ENV;
use crate::shared::protocol::runnerd::{CredentialAnswer, CredentialQuery};
use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

/// How long the helper waits for runnerd.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of helper input read from git.
pub const MAX_INPUT_BYTES: u64 = 64 * 1024;

/// Arguments of `tale git-credential`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The operation git asks for: `get`, `store` or `erase`.
    pub operation: String,
}

/// The `key=value` attributes git sent, up to the first empty line.
pub fn parse_attributes(input: impl BufRead) -> Vec<(String, String)> {
    input
        .lines()
        .map_while(Result::ok)
        .take_while(|line| !line.is_empty())
        .filter_map(|line| {
            line.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// The helper's output for an answer: `username=…` and `password=…` lines, or nothing.
pub fn render_answer(answer: &CredentialAnswer) -> String {
    match (&answer.username, &answer.password) {
        (Some(username), Some(password)) => format!("username={username}\npassword={password}\n"),
        _ => String::new(),
    }
}

fn ask_runnerd(socket: &str, host: &str) -> std::io::Result<CredentialAnswer> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
    stream.set_write_timeout(Some(SOCKET_TIMEOUT))?;
    let mut query = serde_json::to_vec(&CredentialQuery {
        host: host.to_owned(),
    })?;
    query.push(b'\n');
    stream.write_all(&query)?;
    let mut line = String::new();
    std::io::BufReader::new(stream.take(MAX_INPUT_BYTES)).read_line(&mut line)?;
    Ok(serde_json::from_str(line.trim_end())?)
}

/// Runs one helper operation; always exits 0, as git expects of helpers with nothing to say.
pub fn run(args: Args) -> ExitCode {
    if args.operation != "get" {
        return ExitCode::SUCCESS;
    }
    let attributes = parse_attributes(std::io::stdin().lock().take(MAX_INPUT_BYTES));
    let Some(host) = attributes.iter().find(|(k, _)| k == "host").map(|(_, v)| v) else {
        return ExitCode::SUCCESS;
    };
    let Ok(socket) = std::env::var(CREDENTIAL_SOCKET_ENV) else {
        return ExitCode::SUCCESS;
    };
    match ask_runnerd(&socket, host) {
        Ok(answer) => {
            let _ = std::io::stdout().write_all(render_answer(&answer).as_bytes());
        }
        Err(err) => eprintln!("tale git-credential: runnerd did not answer: {err}"),
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attributes stop at the first empty line; lines without `=` are ignored.
    #[test]
    fn attributes() {
        let input = b"protocol=https\nhost=github.com\nbogus\n\nhost=later\n";
        assert_eq!(
            parse_attributes(&input[..]),
            vec![
                ("protocol".to_string(), "https".to_string()),
                ("host".to_string(), "github.com".to_string())
            ]
        );
    }

    /// Only a complete answer is printed.
    #[test]
    fn answers() {
        let full = CredentialAnswer {
            username: Some("u".into()),
            password: Some("p".into()),
        };
        assert_eq!(render_answer(&full), "username=u\npassword=p\n");
        assert_eq!(render_answer(&CredentialAnswer::default()), "");
    }
}
