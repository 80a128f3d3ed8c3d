//! What the bench measures the product against: a bare HTTP loop, and the CPU the product
//! spends per SIP user it creates.
//!
//! The bare loop is the product's own HTTP client (the same stack, the same settings) sending
//! the same number of POSTs of a SIP user's JSON to the same simulator, with the same
//! concurrency, and nothing else: no database, no plan, no signature. The simulator sleeps its
//! latency before it looks at a request, so the unsigned POSTs wait as long as a create does
//! before they are refused (401). The product's ratio to it is what the engine costs beyond the
//! network.
//!
//! The CPU figure counts this process's threads except the simulator's, which runs on a thread
//! of its own for that reason (SQLite's work is in this process and counted; PostgreSQL's server
//! is not).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::BenchError;
use crate::sim::{self, SimConfig, SimHandle};

/// Runs of the bare loop; the median is the floor.
pub(super) const FLOOR_RUNS: usize = 5;

/// The simulator on a thread and runtime of its own. Dropping it stops both.
pub(super) struct SimThread {
    handle: Option<SimHandle>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The thread's id, for its CPU time in `/proc/self/task`.
    tid: u32,
}

impl std::ops::Deref for SimThread {
    type Target = SimHandle;
    fn deref(&self) -> &SimHandle {
        self.handle.as_ref().expect("held until dropped")
    }
}

impl Drop for SimThread {
    fn drop(&mut self) {
        drop(self.handle.take());
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl SimThread {
    pub(super) fn start(config: SimConfig) -> Result<SimThread, BenchError> {
        let (started, handed) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mbg-sim".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let tid = current_tid();
                    let result = sim::start(config, ([127, 0, 0, 1], 0).into()).await;
                    let _ = started.send(result.map(|handle| (handle, tid)));
                    let _ = stopped.await;
                });
            })
            .map_err(BenchError::Simulator)?;
        let (handle, tid) = handed
            .recv()
            .map_err(|_| BenchError::Simulator(std::io::Error::other("the thread ended")))?
            .map_err(BenchError::Simulator)?;
        Ok(SimThread {
            handle: Some(handle),
            stop: Some(stop),
            thread: Some(thread),
            tid,
        })
    }

    /// CPU seconds (user + system) the simulator's thread has used.
    fn cpu(&self) -> f64 {
        cpu_seconds(&format!("/proc/self/task/{}/stat", self.tid))
    }
}

/// The CPU seconds this process's threads other than the simulator's spend in `work`, and
/// its result.
pub(super) async fn client_cpu<T>(
    sim: &SimThread,
    work: impl std::future::Future<Output = T>,
) -> (T, f64) {
    let (process, simulator) = (cpu_seconds("/proc/self/stat"), sim.cpu());
    let value = work.await;
    let spent = (cpu_seconds("/proc/self/stat") - process) - (sim.cpu() - simulator);
    (value, spent.max(0.0))
}

/// The bare loop, [`FLOOR_RUNS`] times: its median time for `n` POSTs, `in_flight` at once.
pub(super) async fn bare_loop(
    http: &reqwest::Client,
    url: &str,
    n: usize,
    in_flight: usize,
) -> Result<Duration, BenchError> {
    let mut runs = Vec::with_capacity(FLOOR_RUNS);
    for _ in 0..FLOOR_RUNS {
        let started = Instant::now();
        let answered: Vec<Result<u16, String>> = futures_util::stream::iter(0..n)
            .map(|i| async move {
                let body = serde_json::json!({
                    "icp": "MiVO250-1",
                    "setside_username": format!("bare{i:07}"),
                    "setside_password": "Bare-Loop-Password-1",
                    "icpside_username": (100_000 + i).to_string(),
                    "icpside_password": "Bare-Loop-Password-2",
                    "description": format!("mbg-provision ext {}", 100_000 + i),
                    "enabled": true,
                });
                let response = http
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = response.status().as_u16();
                response.bytes().await.map_err(|e| e.to_string())?;
                Ok(status)
            })
            .buffer_unordered(in_flight.max(1))
            .collect()
            .await;
        let elapsed = started.elapsed();
        if let Some(Err(e)) = answered.iter().find(|a| a.is_err()) {
            return Err(super::wrong("bare loop", e.clone()));
        }
        runs.push(elapsed);
    }
    runs.sort();
    Ok(runs[FLOOR_RUNS / 2])
}

/// Utime + stime of a `stat` file of procfs, in seconds.
fn cpu_seconds(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15, the 12th and 13th after the name and state.
    // SAFETY: sysconf reads a constant of the system; it has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / per_second.max(1.0)
}

fn current_tid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}
