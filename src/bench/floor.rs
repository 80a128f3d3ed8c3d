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
//! Both are run [`FLOOR_RUNS`] times in rounds, each round on a fresh database and simulator,
//! the sync first in one round and the loop first in the next: on a shared 2-core VM the speed
//! of the same loop drifted by more than the 5 % being judged between runs a minute apart, and a
//! single sync beside a median of loops judged the drift as much as the product.
//!
//! The CPU figure counts this process's threads except the simulator's, which runs on a thread
//! of its own for that reason (SQLite's work is in this process and counted; PostgreSQL's server
//! is not). The simulator's own CPU is reported beside it: it does more for a signed create (the
//! signature, the nonce, the device) than for an unsigned POST it refuses, and on two cores that
//! work competes with the client's.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::BenchError;
use crate::sim::{self, SimConfig, SimHandle};

/// Rounds of the comparison, each a creating sync and a bare loop on a fresh database and
/// simulator, in alternating order; the medians are compared.
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

/// CPU seconds (user + system) spent while a piece of work ran.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct CpuSpent {
    /// This process's threads but the simulator's.
    pub(super) client: f64,
    /// The simulator's thread: the MBG's share, which a real MBG spends on its own machine.
    pub(super) simulator: f64,
}

/// Runs `work`, and measures the CPU it cost the client and the simulator.
pub(super) async fn cpu_spent<T>(
    sim: &SimThread,
    work: impl std::future::Future<Output = T>,
) -> (T, CpuSpent) {
    let (process, simulator) = (cpu_seconds("/proc/self/stat"), sim.cpu());
    let value = work.await;
    let simulator = sim.cpu() - simulator;
    let client = (cpu_seconds("/proc/self/stat") - process) - simulator;
    let spent = CpuSpent {
        client: client.max(0.0),
        simulator: simulator.max(0.0),
    };
    (value, spent)
}

/// One run of the bare loop: `n` POSTs, `in_flight` at once; how long it took.
pub(super) async fn bare_loop(
    http: &reqwest::Client,
    url: &str,
    n: usize,
    in_flight: usize,
) -> Result<Duration, BenchError> {
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
    Ok(elapsed)
}

/// The middle value (the upper of the two middle ones for an even count); 0 for none.
pub(super) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
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
