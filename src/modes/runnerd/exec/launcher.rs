//! How an exec's process is set up: program, environment, user, process group, pipes.
use super::spec::{ExecSpec, Program};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `TERM` of a pty exec unless the env store or the request's overlay sets another.
pub const PTY_TERM: &str = "xterm-256color";

/// Everything about the process that does not depend on the request, decided once at boot.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// runnerd's own environment minus its secrets, plus the exec `HOME`: the lowest layer.
    base_env: Vec<(String, String)>,
    /// `bash` when the image has it, else `sh`.
    shell: PathBuf,
    /// uid:gid every exec drops to (only when runnerd runs as root).
    exec_user: Option<(u32, u32)>,
}

/// Names of runnerd's environment that never reach an exec: the runnerd token (and where it is
/// read from) and the seed env (which may hold secrets the env store refused).
pub fn is_private_daemon_var(name: &str) -> bool {
    name.starts_with("TALE_RUNNERD_") || name == "TALE_SESSION_ENV"
}

impl Launcher {
    pub fn new(
        daemon_env: impl IntoIterator<Item = (String, String)>,
        home: &Path,
        exec_user: Option<(u32, u32)>,
    ) -> Launcher {
        let mut base: BTreeMap<String, String> = daemon_env
            .into_iter()
            .filter(|(name, _)| !is_private_daemon_var(name))
            .collect();
        base.insert("HOME".into(), home.display().to_string());
        let shell = find_in_path(base.get("PATH").map(String::as_str), "bash")
            .unwrap_or_else(|| PathBuf::from("/bin/sh"));
        Launcher {
            base_env: base.into_iter().collect(),
            shell,
            exec_user,
        }
    }

    /// The uid:gid execs drop to, when runnerd runs as root.
    pub fn exec_user(&self) -> Option<(u32, u32)> {
        self.exec_user
    }

    /// The shell used for the `shell` form.
    pub fn shell(&self) -> &Path {
        &self.shell
    }

    /// The command for `spec`, run in `cwd` with env layers base < store < overlay, in a new session
    /// (own process group), with all three stdio streams piped — or, given a pty's slave
    /// (`terminal`), with that as stdin, stdout, stderr and controlling terminal.
    /// [`Launcher::set_identity`] then decides the user it runs as.
    pub fn command(
        &self,
        spec: &ExecSpec,
        cwd: &Path,
        store: &BTreeMap<String, String>,
        terminal: Option<&OwnedFd>,
    ) -> std::io::Result<Command> {
        let mut command = match &spec.program {
            Program::Argv(argv) => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
            Program::Shell(line) => {
                let mut c = Command::new(&self.shell);
                // `$0` is the shell's name (`bash`, `sh`) as where the original looked it up in PATH.
                if let Some(name) = self.shell.file_name() {
                    std::os::unix::process::CommandExt::arg0(&mut c, name);
                }
                c.arg("-lc").arg(line);
                c
            }
        };
        command
            .env_clear()
            .envs(self.base_env.iter().map(|(k, v)| (k, v)));
        if terminal.is_some() {
            // Full-screen programs need a terminal type; the store and the overlay may change it.
            command.env("TERM", PTY_TERM);
        }
        command
            .envs(store)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env("TALE_EXEC_ID", &spec.exec_id)
            .current_dir(cwd);
        match terminal {
            None => {
                command
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
            }
            Some(slave) => {
                command
                    .stdin(slave.try_clone()?)
                    .stdout(slave.try_clone()?)
                    .stderr(slave.try_clone()?);
            }
        }
        crate::shared::sys::spawn_in_new_session(&mut command);
        if terminal.is_some() {
            crate::shared::sys::pty::take_controlling_terminal(&mut command);
        }
        // runnerd raised its own descriptor limit; the exec gets the one runnerd inherited.
        crate::shared::sys::rlimit::restore_inherited_nofile_limit(&mut command);
        Ok(command)
    }

    /// Runs `command` as the exec user (when runnerd is root) whose only supplementary group is the
    /// exec's mark group, if any; leaving root through setuid clears every capability.
    pub fn set_identity(&self, command: &mut Command, mark_gid: Option<u32>) {
        if let Some((uid, gid)) = self.exec_user {
            let groups: &[u32] = match &mark_gid {
                Some(mark) => std::slice::from_ref(mark),
                None => &[],
            };
            crate::shared::sys::drop_privileges(command, uid, gid, groups);
        }
    }
}

fn find_in_path(path: Option<&str>, program: &str) -> Option<PathBuf> {
    let path = path.unwrap_or("/usr/local/bin:/usr/bin:/bin");
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The runnerd token and seed env never reach an exec; HOME is the exec home.
    #[test]
    fn base_env_drops_daemon_secrets() {
        let launcher = Launcher::new(
            [
                ("TALE_RUNNERD_TOKEN".to_string(), "secret".to_string()),
                ("TALE_RUNNERD_TOKEN_FILE".to_string(), "/run/t".to_string()),
                ("TALE_SESSION_ENV".to_string(), "{}".to_string()),
                ("PATH".to_string(), "/usr/bin:/bin".to_string()),
                ("HOME".to_string(), "/root".to_string()),
            ],
            Path::new("/workspace/.home"),
            None,
        );
        let names: Vec<&str> = launcher.base_env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, vec!["HOME", "PATH"]);
        assert_eq!(launcher.base_env[0].1, "/workspace/.home");
    }
}
