//! Which inner loops the kernels run: a [`Path`] chosen once from the CPU's features (AVX-512 BF16, AVX-512,
//! AVX2 + FMA, or the portable loops), or forced by `CLEM_KERNELS=avx512bf16|avx512|avx2|portable` (for tests and
//! comparisons). Forcing a path the CPU lacks is an error naming the missing features, never a silent fallback
//! (and never its instructions run: every kernel entry checks its path against the CPU first).
//!
//! [`choose`] and [`select`] are pure (feature set and variable in, path out) so the dispatch is tested on any
//! machine; [`path`] is the process-wide default, [`Features::detect`] what this CPU has.

use std::fmt;
use std::sync::OnceLock;

use crate::KernelError;

/// The environment variable that forces a path.
pub const ENV: &str = "CLEM_KERNELS";

/// A family of inner loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// AVX-512 with `vdpbf16ps` for bf16 weights (activations rounded to bf16, products summed in f32); f32 and
    /// f16 weights as [`Path::Avx512`].
    Avx512Bf16,
    /// AVX-512F: 16-lane f32 sums, tiles of 6 rows x 64 outputs.
    Avx512,
    /// AVX2 + FMA (+ F16C): 8-lane f32 sums, tiles of 6 rows x 16 outputs.
    Avx2,
    /// Plain Rust: the same sums in the same order as the f32 SIMD paths.
    Portable,
}

impl Path {
    /// Every path, fastest first (the order [`choose`] tries them in; also their discriminants' order).
    pub const ALL: [Path; 4] = [Path::Avx512Bf16, Path::Avx512, Path::Avx2, Path::Portable];

    /// The name `CLEM_KERNELS` takes.
    pub fn name(self) -> &'static str {
        match self {
            Path::Avx512Bf16 => "avx512bf16",
            Path::Avx512 => "avx512",
            Path::Avx2 => "avx2",
            Path::Portable => "portable",
        }
    }

    /// The path a `CLEM_KERNELS` value names (case and surrounding spaces ignored).
    pub fn parse(name: &str) -> Option<Path> {
        let name = name.trim().to_ascii_lowercase();
        Path::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The CPU features this path's instructions need.
    pub fn needs(self) -> &'static [&'static str] {
        match self {
            Path::Avx512Bf16 => &["avx2", "fma", "f16c", "avx512f", "avx512bf16"],
            Path::Avx512 => &["avx2", "fma", "f16c", "avx512f"],
            Path::Avx2 => &["avx2", "fma", "f16c"],
            Path::Portable => &[],
        }
    }

    /// The features of [`Path::needs`] that `features` lacks (empty: the path can run).
    pub fn missing(self, features: &Features) -> Vec<&'static str> {
        self.needs().iter().copied().filter(|f| !features.has(f)).collect()
    }

    /// Ok when this CPU can run the path; else the error names the missing features.
    pub fn check(self) -> Result<Path, KernelError> {
        if self.supported() {
            Ok(self)
        } else {
            Err(KernelError::Unsupported { path: self.name(), missing: self.missing(Features::detect()).join(", ") })
        }
    }

    /// Whether this CPU can run the path (looked up once: kernels check their path on every call).
    pub fn supported(self) -> bool {
        static SUPPORTED: OnceLock<[bool; 4]> = OnceLock::new();
        let table = SUPPORTED.get_or_init(|| Path::ALL.map(|p| p.missing(Features::detect()).is_empty()));
        table[self as usize]
    }

    /// The path the f32-sum tiles take: the BF16 path runs the AVX-512 ones for f32 and f16 weights.
    pub(crate) fn f32_sums(self) -> Path {
        match self {
            Path::Avx512Bf16 => Path::Avx512,
            other => other,
        }
    }

    /// Whether the 8-lane AVX2 loops (attention, vector exponential) may run: every SIMD path has AVX2.
    pub(crate) fn has_avx2(self) -> bool {
        self != Path::Portable
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The CPU features the paths depend on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    pub avx2: bool,
    pub fma: bool,
    pub f16c: bool,
    pub avx512f: bool,
    pub avx512bf16: bool,
}

impl Features {
    /// The names [`Features::has`] knows, in display order.
    pub const NAMES: [&'static str; 5] = ["avx2", "fma", "f16c", "avx512f", "avx512bf16"];

    /// A feature set from names (unknown names ignored): `Features::of(&["avx2", "fma"])`.
    pub fn of(names: &[&str]) -> Features {
        Features {
            avx2: names.contains(&"avx2"),
            fma: names.contains(&"fma"),
            f16c: names.contains(&"f16c"),
            avx512f: names.contains(&"avx512f"),
            avx512bf16: names.contains(&"avx512bf16"),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        match name {
            "avx2" => self.avx2,
            "fma" => self.fma,
            "f16c" => self.f16c,
            "avx512f" => self.avx512f,
            "avx512bf16" => self.avx512bf16,
            _ => false,
        }
    }

    /// This CPU's features (detected once; the OS must also save the registers, which the detection checks).
    pub fn detect() -> &'static Features {
        static DETECTED: OnceLock<Features> = OnceLock::new();
        DETECTED.get_or_init(detect_now)
    }

    /// "avx2 fma f16c -avx512f -avx512bf16": each feature, `-` when absent.
    pub fn describe(&self) -> String {
        let shown: Vec<String> =
            Features::NAMES.iter().map(|n| if self.has(n) { n.to_string() } else { format!("-{n}") }).collect();
        shown.join(" ")
    }
}

#[cfg(target_arch = "x86_64")]
fn detect_now() -> Features {
    use std::arch::is_x86_feature_detected as has;
    Features {
        avx2: has!("avx2"),
        fma: has!("fma"),
        f16c: has!("f16c"),
        avx512f: has!("avx512f"),
        avx512bf16: has!("avx512bf16"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_now() -> Features {
    Features::default()
}

/// The fastest path `features` can run.
pub fn choose(features: &Features) -> Path {
    Path::ALL.into_iter().find(|p| p.missing(features).is_empty()).unwrap_or(Path::Portable)
}

/// The path for a `CLEM_KERNELS` value (`None`, empty or `auto`: [`choose`]); a name the variable does not take,
/// or a path `features` cannot run, is an error saying so.
pub fn select(forced: Option<&str>, features: &Features) -> Result<Path, KernelError> {
    let forced = forced.map(str::trim).filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("auto"));
    let Some(value) = forced else { return Ok(choose(features)) };
    let Some(path) = Path::parse(value) else {
        return Err(KernelError::UnknownPath { value: value.to_string() });
    };
    let missing = path.missing(features);
    if missing.is_empty() {
        Ok(path)
    } else {
        Err(KernelError::Unsupported { path: path.name(), missing: missing.join(", ") })
    }
}

/// The process's default path: `CLEM_KERNELS` if set, else the fastest this CPU runs; read once. An error when
/// the variable names no path or one this CPU cannot run (loaders report it; kernels called without an explicit
/// path return it).
pub fn path() -> Result<Path, KernelError> {
    static PATH: OnceLock<Result<Path, KernelError>> = OnceLock::new();
    PATH.get_or_init(|| {
        let forced = std::env::var(ENV).ok();
        select(forced.as_deref(), Features::detect())
    })
    .clone()
}

/// The CPU's model name as it reports it (CPUID brand string), e.g. "AMD EPYC 7B13"; "unknown" elsewhere.
pub fn cpu_model() -> String {
    static MODEL: OnceLock<String> = OnceLock::new();
    MODEL.get_or_init(brand).clone()
}

#[cfg(target_arch = "x86_64")]
fn brand() -> String {
    use std::arch::x86_64::__cpuid;
    // Leaves above the reported maximum are not queried.
    let max = __cpuid(0x8000_0000).eax;
    if max < 0x8000_0004 {
        return "unknown".into();
    }
    let mut bytes = Vec::with_capacity(48);
    for leaf in 0x8000_0002u32..=0x8000_0004 {
        let r = __cpuid(leaf);
        for word in [r.eax, r.ebx, r.ecx, r.edx] {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let name = text.trim_matches(|c: char| c == '\0' || c.is_whitespace()).split_whitespace().collect::<Vec<_>>();
    if name.is_empty() {
        "unknown".into()
    } else {
        name.join(" ")
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn brand() -> String {
    "unknown".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_feature_set_gets_the_fastest_path_it_can_run() {
        let cases: [(&[&str], Path); 8] = [
            (&[], Path::Portable),
            (&["avx2"], Path::Portable),
            (&["avx2", "fma"], Path::Portable),
            (&["avx2", "fma", "f16c"], Path::Avx2),
            // AVX-512 without the AVX2 set does not exist, but must not pick a path that needs it.
            (&["avx512f", "avx512bf16"], Path::Portable),
            (&["avx2", "fma", "f16c", "avx512f"], Path::Avx512),
            (&["avx2", "fma", "f16c", "avx512bf16"], Path::Avx2),
            (&["avx2", "fma", "f16c", "avx512f", "avx512bf16"], Path::Avx512Bf16),
        ];
        for (names, want) in cases {
            assert_eq!(choose(&Features::of(names)), want, "{names:?}");
        }
    }

    #[test]
    fn forcing_a_path_the_cpu_lacks_is_an_error_naming_what_is_missing() {
        let avx2 = Features::of(&["avx2", "fma", "f16c"]);
        assert_eq!(select(Some("avx2"), &avx2), Ok(Path::Avx2));
        assert_eq!(select(Some(" Portable "), &avx2), Ok(Path::Portable));
        assert_eq!(select(None, &avx2), Ok(Path::Avx2));
        assert_eq!(select(Some(""), &avx2), Ok(Path::Avx2));
        assert_eq!(select(Some("auto"), &avx2), Ok(Path::Avx2));
        let e = select(Some("avx512bf16"), &avx2).expect_err("no AVX-512 here");
        assert_eq!(e, KernelError::Unsupported { path: "avx512bf16", missing: "avx512f, avx512bf16".into() });
        let text = e.to_string();
        assert!(text.contains("CLEM_KERNELS") && text.contains("avx512f"), "{text}");
        let e = select(Some("avx512"), &Features::default()).expect_err("nothing here");
        assert!(e.to_string().contains("avx2, fma, f16c, avx512f"), "{e}");
        let e = select(Some("sse9"), &avx2).expect_err("no such path");
        assert!(e.to_string().contains("sse9") && e.to_string().contains("avx512bf16|avx512|avx2|portable"), "{e}");
        let all = Features::of(&Features::NAMES);
        for p in Path::ALL {
            assert_eq!(select(Some(p.name()), &all), Ok(p));
            assert_eq!(Path::parse(&p.to_string()), Some(p));
        }
    }

    #[test]
    fn this_cpu_runs_the_path_chosen_for_it() {
        let features = Features::detect();
        let chosen = choose(features);
        assert!(chosen.check().is_ok(), "{chosen} on {}", features.describe());
        assert!(Path::Portable.supported());
        for (i, p) in Path::ALL.into_iter().enumerate() {
            // Tables are indexed by the discriminant.
            assert_eq!(p as usize, i);
            assert_eq!(p.supported(), p.check().is_ok());
        }
        println!("CPU {}: {}; chosen path {chosen}", cpu_model(), features.describe());
        assert!(!cpu_model().is_empty());
    }
}
