//! Which CPU kernels this process runs, named in one line, and the cap that makes a
//! fast CPU run a slower CPU's kernels.
//!
//! Each kernel family picks its code at run time: the element-wise loops that
//! `multiversioned!` compiles (AVX-512, AVX2+FMA or portable), the int8 matmul
//! ([`Int8Kernel`], chosen by its own `SEMBASE_INT8_KERNEL`), the GGUF Q4_1 matmul
//! (AVX2+FMA+F16C or portable) and candle's fp32 GEMM (the `gemm` crate's own choice,
//! which nothing here changes). [`report`] names them all, so that figures from
//! different machines can be told apart. `SEMBASE_CPU_KERNELS` caps the element-wise
//! and Q4_1 paths, so that every path this CPU can run can be run and checked here.

use std::sync::OnceLock;

use super::int8_linear::Int8Kernel;
use crate::error::{Error, Result};

/// The variable that caps the kernel set: `avx512`, `avx2` or `portable`.
pub const CAP_VAR: &str = "SEMBASE_CPU_KERNELS";

/// A set of element-wise kernels, slowest first (the order of the cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KernelSet {
    /// Compiled for the build's baseline CPU (SSE2 on x86-64, NEON on aarch64).
    Portable,
    /// AVX2 and FMA.
    Avx2,
    /// AVX-512F, on top of AVX2 and FMA.
    Avx512,
}

impl KernelSet {
    /// Every set, slowest first.
    pub const ALL: [Self; 3] = [Self::Portable, Self::Avx2, Self::Avx512];

    /// The name `SEMBASE_CPU_KERNELS` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the set (and so every set below it).
    pub fn supported(self) -> bool {
        match self {
            Self::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => is_x86_feature_detected!("avx512f") && Self::Avx2.supported(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest set this CPU supports.
    pub fn detect() -> Self {
        Self::ALL.into_iter().rev().find(|set| set.supported()).unwrap_or(Self::Portable)
    }

    /// The set `SEMBASE_CPU_KERNELS` names (refused when this CPU lacks its
    /// instructions), or the fastest this CPU supports when it is unset.
    pub fn from_env() -> Result<Self> {
        match std::env::var(CAP_VAR) {
            Ok(name) => Self::parse(&name),
            Err(_) => Ok(Self::detect()),
        }
    }

    fn parse(name: &str) -> Result<Self> {
        let wanted = Self::ALL.into_iter().find(|set| set.name() == name).ok_or_else(|| {
            Error::Device(format!("{CAP_VAR}={name}: expected avx512, avx2 or portable"))
        })?;
        if !wanted.supported() {
            return Err(Error::Device(format!(
                "{CAP_VAR}={name}: this CPU lacks the instructions"
            )));
        }
        Ok(wanted)
    }

    /// The set as the kernel line names it: its instructions.
    fn describe(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2+fma",
            Self::Avx512 => "avx512",
        }
    }
}

/// The set the element-wise and Q4_1 kernels run: [`KernelSet::from_env`], read once.
/// A value it refuses leaves the fastest set here; the `sembase` binary reports the
/// error before it runs a command.
pub(crate) fn active() -> KernelSet {
    static SET: OnceLock<KernelSet> = OnceLock::new();
    #[cfg(test)]
    if let Some(set) = FORCED.get() {
        return set;
    }
    *SET.get_or_init(|| KernelSet::from_env().unwrap_or_else(|_| KernelSet::detect()))
}

/// One line naming the CPU kernels this process runs, e.g.
/// `kernels: fp32 gemm(avx2+fma), elementwise avx2+fma, int8 avx2, q4_1 avx2 (cpu: avx2 fma f16c)`;
/// an error where `SEMBASE_CPU_KERNELS` or `SEMBASE_INT8_KERNEL` names kernels this CPU lacks.
pub fn report() -> Result<String> {
    KernelSet::from_env()?;
    // The Debug name, lower-cased, is the name `SEMBASE_INT8_KERNEL` takes.
    let int8 = format!("{:?}", Int8Kernel::from_env()?).to_lowercase();
    let q4_1 = if super::q4_1::has_avx2() { "avx2" } else { "portable" };
    let features = cpu_features();
    let cpu = if features.is_empty() { "baseline".to_string() } else { features.join(" ") };
    Ok(format!(
        "kernels: fp32 gemm({}), elementwise {}, int8 {int8}, q4_1 {q4_1} (cpu: {cpu})",
        gemm_kernel(),
        active().describe(),
    ))
}

/// The instruction-set extensions that some kernel here (or gemm's) looks for and
/// this CPU has.
fn cpu_features() -> Vec<&'static str> {
    #[cfg(target_arch = "x86_64")]
    let found = [
        ("avx512f", is_x86_feature_detected!("avx512f")),
        ("avx512vnni", is_x86_feature_detected!("avx512vnni")),
        ("avxvnni", is_x86_feature_detected!("avxvnni")),
        ("avx2", is_x86_feature_detected!("avx2")),
        ("fma", is_x86_feature_detected!("fma")),
        ("f16c", is_x86_feature_detected!("f16c")),
    ];
    #[cfg(target_arch = "aarch64")]
    let found = [
        ("neon", std::arch::is_aarch64_feature_detected!("neon")),
        ("dotprod", std::arch::is_aarch64_feature_detected!("dotprod")),
        ("i8mm", std::arch::is_aarch64_feature_detected!("i8mm")),
    ];
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let found: [(&str, bool); 0] = [];
    found.into_iter().filter_map(|(name, present)| present.then_some(name)).collect()
}

/// The f32 kernel the `gemm` crate picks, by the rule of gemm-common 0.19's
/// `init_gemm_fn` (with the `x86-v4` feature this crate turns on); gemm offers no
/// way to ask it.
fn gemm_kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            "avx512"
        } else if is_x86_feature_detected!("fma") {
            "avx2+fma"
        } else {
            "scalar"
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            "neon"
        } else {
            "scalar"
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "scalar"
    }
}

#[cfg(test)]
thread_local! {
    /// The set [`with_kernel_set`] forces on this thread.
    static FORCED: std::cell::Cell<Option<KernelSet>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with the kernels that `f` calls on this thread forced to `set` (work a
/// kernel hands to the thread pool runs at the process's set).
#[cfg(test)]
pub(crate) fn with_kernel_set<R>(set: KernelSet, f: impl FnOnce() -> R) -> R {
    assert!(set.supported(), "this CPU cannot run {set:?}");
    let previous = FORCED.replace(Some(set));
    let result = f();
    FORCED.set(previous);
    result
}

/// Runs `compute` under every kernel set this CPU supports and checks each result
/// against the portable set's, value by value, to `relative` of the larger magnitude
/// (the sets may order float operations differently).
#[cfg(test)]
pub(crate) fn assert_every_set_agrees(what: &str, relative: f32, compute: impl Fn() -> Vec<f32>) {
    let portable = with_kernel_set(KernelSet::Portable, &compute);
    for set in KernelSet::ALL.into_iter().filter(|set| set.supported()) {
        let got = with_kernel_set(set, &compute);
        assert_eq!(got.len(), portable.len(), "{what}: {set:?} gives another length");
        for (i, (g, p)) in got.iter().zip(&portable).enumerate() {
            let scale = g.abs().max(p.abs()).max(f32::MIN_POSITIVE);
            assert!((g - p).abs() <= relative * scale, "{what}[{i}]: {set:?} {g}, portable {p}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_parsed_and_sets_this_cpu_lacks_are_refused() {
        for set in KernelSet::ALL {
            match KernelSet::parse(set.name()) {
                Ok(parsed) => assert_eq!(parsed, set),
                Err(e) => {
                    assert!(!set.supported(), "{set:?} refused: {e}");
                    assert!(e.to_string().contains("this CPU lacks"), "{e}");
                }
            }
        }
        let message = KernelSet::parse("sse").unwrap_err().to_string();
        assert!(message.contains("SEMBASE_CPU_KERNELS=sse: expected"), "{message}");
        assert!(KernelSet::detect().supported());
    }

    #[test]
    fn the_forced_set_is_the_active_one_on_this_thread_only() {
        let outside = active();
        with_kernel_set(KernelSet::Portable, || {
            assert_eq!(active(), KernelSet::Portable);
            assert!(!crate::kernels::q4_1::has_avx2());
            assert_eq!(std::thread::spawn(active).join().unwrap(), outside);
        });
        assert_eq!(active(), outside);
    }

    #[test]
    fn the_report_is_one_line_naming_every_family() {
        let line = report().unwrap();
        assert!(!line.contains('\n'), "{line}");
        for part in ["kernels: fp32 gemm(", "elementwise ", ", int8 ", ", q4_1 ", " (cpu: "] {
            assert!(line.contains(part), "{part:?} missing from {line}");
        }
    }
}
