//! Starting `vllm serve` as a child process and making sure it dies with clemrs.
//!
//! The child gets its own process group (vLLM forks engine and worker processes; stopping the group stops them
//! all) and, on Linux, `PR_SET_PDEATHSIG = SIGTERM`, so it is told to stop even when clemrs is killed or dies on
//! Ctrl-C without running destructors. The death signal follows the *thread* that forked, so the child is
//! spawned from a dedicated thread that lives exactly as long as the child. [`Child`]'s `Drop` sends SIGTERM to
//! the group, waits, then SIGKILL. Output goes to a log file; startup waits for `GET /health` with a spinner.

use std::fs::File;
use std::io::{IsTerminal as _, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// Why the server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("no free port on 127.0.0.1: {0}")]
    Port(std::io::Error),
    #[error("cannot create the log file {path}: {source}")]
    Log { path: PathBuf, source: std::io::Error },
    #[error("cannot start {command:?}: {detail} (set model_config.launcher or $CLEM_VLLM_COMMAND)")]
    Spawn { command: String, detail: String },
    #[error("the vLLM server exited ({status}) before it was ready; its output is in {log}:\n{tail}")]
    Exited { status: String, log: String, tail: String },
    #[error("the vLLM server was not ready after {secs} s (GET /health); its output is in {log}:\n{tail}")]
    Timeout { secs: u64, log: String, tail: String },
}

/// What to run.
#[derive(Clone, Debug)]
pub struct LaunchSpec {
    /// The program and its leading arguments (`["vllm"]`, or a wrapper).
    pub command: Vec<String>,
    /// Arguments after `serve MODEL`, without `--host`/`--port` (added here).
    pub args: Vec<String>,
    pub model: String,
    pub log: PathBuf,
    pub startup_timeout: Duration,
}

/// A running server; dropping it stops the whole process group.
pub struct Child {
    pub root: String,
    pub log: PathBuf,
    pid: i32,
    /// The exit status, sent by the spawning thread (a Mutex: `Model` must be `Sync`).
    exited: Mutex<mpsc::Receiver<String>>,
}

/// A port that is free now (the small race until the server binds it is accepted).
pub fn free_port() -> Result<u16, LaunchError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(LaunchError::Port)?;
    Ok(l.local_addr().map_err(LaunchError::Port)?.port())
}

/// The full argument list: `serve MODEL --host 127.0.0.1 --port PORT ARGS...`.
pub fn serve_args(spec: &LaunchSpec, port: u16) -> Vec<String> {
    // An empty command stands for `vllm` (see `launch`): no leading arguments then.
    let mut argv: Vec<String> = spec.command.get(1..).unwrap_or_default().to_vec();
    argv.extend(["serve".into(), spec.model.clone(), "--host".into(), "127.0.0.1".into()]);
    argv.extend(["--port".into(), port.to_string()]);
    argv.extend(spec.args.iter().cloned());
    argv
}

/// Starts the server and waits until `/health` answers 200.
pub fn launch(spec: &LaunchSpec) -> Result<Child, LaunchError> {
    let port = free_port()?;
    let log = File::create(&spec.log).map_err(|source| LaunchError::Log { path: spec.log.clone(), source })?;
    let log2 = log.try_clone().map_err(|source| LaunchError::Log { path: spec.log.clone(), source })?;
    let program = spec.command.first().cloned().unwrap_or_else(|| "vllm".into());
    let mut cmd = Command::new(&program);
    cmd.args(serve_args(spec, port)).stdin(Stdio::null()).stdout(log).stderr(log2);
    set_lifetime(&mut cmd);

    // The spawning thread waits for the child, so it lives as long as the child (see the module doc).
    let (started_tx, started_rx) = mpsc::channel();
    let (exit_tx, exit_rx) = mpsc::channel();
    let spawn = std::thread::Builder::new().name("clem-vllm-child".into()).spawn(move || match cmd.spawn() {
        Ok(mut child) => {
            let _ = started_tx.send(Ok(child.id() as i32));
            let status = child.wait().map_or_else(|e| e.to_string(), |s| s.to_string());
            let _ = exit_tx.send(status);
        }
        Err(e) => {
            let _ = started_tx.send(Err(e.to_string()));
        }
    });
    let spawn_error = |detail: String| LaunchError::Spawn { command: spec.command.join(" "), detail };
    spawn.map_err(|e| spawn_error(e.to_string()))?;
    let pid = started_rx.recv().map_err(|e| spawn_error(e.to_string()))?.map_err(spawn_error)?;
    let child =
        Child { root: format!("http://127.0.0.1:{port}"), log: spec.log.clone(), pid, exited: Mutex::new(exit_rx) };
    child.wait_ready(port, spec.startup_timeout)?;
    Ok(child)
}

#[cfg(target_os = "linux")]
fn set_lifetime(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(all(unix, not(target_os = "linux")))]
fn set_lifetime(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    cmd.process_group(0);
}

#[cfg(not(unix))]
fn set_lifetime(_cmd: &mut Command) {}

/// The last lines of the log, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `GET /health` on loopback: `true` on status 200.
pub fn healthy(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 32];
    let n = s.read(&mut head).unwrap_or(0);
    let line = String::from_utf8_lossy(&head[..n]);
    line.starts_with("HTTP/1.") && line.split_whitespace().nth(1) == Some("200")
}

impl Child {
    fn wait_ready(&self, port: u16, timeout: Duration) -> Result<(), LaunchError> {
        let start = Instant::now();
        let tty = std::io::stderr().is_terminal();
        let frames = ['|', '/', '-', '\\'];
        let mut tick = 0usize;
        let log = self.log.display().to_string();
        loop {
            if let Some(status) = self.exit_status(Duration::ZERO) {
                return Err(LaunchError::Exited { status, log, tail: log_tail(&self.log, 20) });
            }
            if healthy(port) {
                if tty {
                    eprint!("\r\x1b[K");
                }
                eprintln!("vllm: ready on {} after {:.1} s (log {log})", self.root, start.elapsed().as_secs_f64());
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(LaunchError::Timeout { secs: timeout.as_secs(), log, tail: log_tail(&self.log, 20) });
            }
            if tty {
                let secs = start.elapsed().as_secs();
                eprint!("\r{} starting vLLM on {} ({secs} s, log {log})", frames[tick % frames.len()], self.root);
                tick += 1;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The exit status if the server exits within `wait` (`None` too when it was already reported).
    fn exit_status(&self, wait: Duration) -> Option<String> {
        let rx = self.exited.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if wait.is_zero() {
            rx.try_recv().ok()
        } else {
            rx.recv_timeout(wait).ok()
        }
    }

    /// The process id of the server (its process group has the same id).
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        #[cfg(unix)]
        {
            // SAFETY: plain syscalls on the group this module created.
            unsafe {
                libc::killpg(self.pid, libc::SIGTERM);
            }
            // vLLM frees GPU memory on SIGTERM; give it time, then make sure.
            if self.exit_status(Duration::from_secs(15)).is_none() {
                unsafe {
                    libc::killpg(self.pid, libc::SIGKILL);
                }
                let _ = self.exit_status(Duration::from_secs(5));
            }
        }
    }
}
