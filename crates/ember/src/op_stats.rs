//! Time and floating-point work per class of operation (convolution, linear layer, attention), so `ember bench` can
//! report achieved GFLOP/s per class next to the machine's peak. Off unless a benchmark turns it on; then every
//! convolution, linear layer and attention call adds its wall time and its FLOPs (a multiply-add counts 2).
//! Only meaningful on the CPU: CUDA kernels run asynchronously, so their calls return before the work is done.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The classes an op is counted in; everything else is "other" (total time minus these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    Conv,
    Linear,
    Attention,
}

impl OpClass {
    pub const ALL: [OpClass; 3] = [OpClass::Conv, OpClass::Linear, OpClass::Attention];

    pub fn name(self) -> &'static str {
        match self {
            OpClass::Conv => "conv",
            OpClass::Linear => "linear",
            OpClass::Attention => "attention",
        }
    }
}

/// What one class accumulated.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClassTotals {
    pub time: Duration,
    pub flops: f64,
    pub calls: u64,
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<[ClassTotals; 3]> = Mutex::new(
    [ClassTotals {
        time: Duration::ZERO,
        flops: 0.0,
        calls: 0,
    }; 3],
);

/// Starts counting from zero.
pub fn start() {
    *TOTALS.lock().unwrap_or_else(|e| e.into_inner()) = Default::default();
    ENABLED.store(true, Ordering::Relaxed);
}

/// Stops counting and returns the totals, in the order of [`OpClass::ALL`].
pub fn stop() -> [ClassTotals; 3] {
    ENABLED.store(false, Ordering::Relaxed);
    *TOTALS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `op`, counting its time and `flops` in `class` while counting is on (costs nothing otherwise).
pub fn count<T>(class: OpClass, flops: f64, op: impl FnOnce() -> T) -> T {
    if !ENABLED.load(Ordering::Relaxed) {
        return op();
    }
    let start = Instant::now();
    let out = op();
    let elapsed = start.elapsed();
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let entry = &mut totals[class as usize];
    entry.time += elapsed;
    entry.flops += flops;
    entry.calls += 1;
    out
}
