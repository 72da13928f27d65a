//! Where a model runs and how its layers compute there: the entry's `model_config.device` ("auto", "cpu",
//! "cuda" or "cuda:N"), the candle device it names, and the memory free on it for the check before loading.
//!
//! On the CPU the layers use [`clem_kernels`] (weights packed as stored, f32 activations) on the kernel path the CPU
//! runs best or `CLEM_KERNELS` forces ([`clem_kernels::path`]; a forced path the CPU lacks fails the load, naming
//! what is missing). Any other device runs
//! candle's own ops ([`Compute::Candle`]): matrices multiplied in the weights' dtype as transformers does on a GPU,
//! everything else in f32. The same candle path also runs on the CPU, where the tests hold it to the same
//! transformers goldens as the kernels: a GPU build only swaps the device under it.

use candle_core::Device;
use clem_kernels::Path as KernelPath;

/// How the layers compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compute {
    /// [`clem_kernels`] on this path: packed weights, fused decoding steps. CPU only.
    Kernels(KernelPath),
    /// candle's own ops, on any device.
    Candle,
}

impl Compute {
    /// The kernel path, when the layers compute with the kernels.
    pub fn kernel_path(self) -> Option<KernelPath> {
        match self {
            Compute::Kernels(path) => Some(path),
            Compute::Candle => None,
        }
    }
}

/// The entry's `model_config.device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSetting {
    /// The first CUDA GPU when this build has the `cuda` feature and one is present, else the CPU (clemcore's
    /// `device_map="auto"` on one device).
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceSetting {
    /// Reads "auto", "cpu", "cuda" or "cuda:N"; the error says what is accepted.
    pub fn parse(value: &str) -> Result<DeviceSetting, String> {
        let bad = || format!("model_config.device must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", not {value:?}");
        match value.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceSetting::Auto),
            "cpu" => Ok(DeviceSetting::Cpu),
            "cuda" => Ok(DeviceSetting::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(DeviceSetting::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

/// A device and how layers compute on it.
#[derive(Clone, Debug)]
pub struct Placement {
    pub device: Device,
    pub compute: Compute,
}

impl Placement {
    /// The CPU with [`clem_kernels`] on the default path (the fast path on a CPU); an error when `CLEM_KERNELS`
    /// names no path or one this CPU cannot run.
    pub fn cpu() -> Result<Placement, String> {
        Placement::cpu_kernels(clem_kernels::path().map_err(|e| e.to_string())?)
    }

    /// The CPU with [`clem_kernels`] on `path` (tests run each path the CPU has); an error when the CPU lacks it.
    pub fn cpu_kernels(path: KernelPath) -> Result<Placement, String> {
        let path = path.check().map_err(|e| e.to_string())?;
        Ok(Placement { device: Device::Cpu, compute: Compute::Kernels(path) })
    }

    /// The CPU running candle's own ops: what a GPU runs, checkable without one.
    pub fn cpu_candle() -> Placement {
        Placement { device: Device::Cpu, compute: Compute::Candle }
    }

    /// The device `setting` names; `Auto` falls back to the CPU when no GPU can be opened.
    pub fn from_setting(setting: DeviceSetting) -> Result<Placement, String> {
        match setting {
            DeviceSetting::Cpu => Placement::cpu(),
            DeviceSetting::Auto => Placement::cuda(0).or_else(|_| Placement::cpu()),
            DeviceSetting::Cuda(n) => Placement::cuda(n),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda(ordinal: usize) -> Result<Placement, String> {
        Device::new_cuda(ordinal)
            .map(|device| Placement { device, compute: Compute::Candle })
            .map_err(|e| format!("cannot open CUDA device {ordinal}: {e}"))
    }

    #[cfg(not(feature = "cuda"))]
    fn cuda(ordinal: usize) -> Result<Placement, String> {
        Err(format!(
            "model_config.device asks for cuda:{ordinal} but this clem was built without the `cuda` feature: build \
             it with `--features cuda` (a CUDA toolkit is needed), or set device to \"cpu\""
        ))
    }

    /// A name for messages: "cpu", "cuda:0".
    pub fn name(&self) -> String {
        match self.device.location() {
            candle_core::DeviceLocation::Cpu => "cpu".into(),
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        }
    }

    /// Bytes free where the model's tensors go, and where that figure comes from; `None` when it cannot be read
    /// (then nothing is checked).
    pub fn available_memory(&self) -> (Option<u64>, String) {
        match &self.device {
            Device::Cpu => (crate::memory::mem_available(), "MemAvailable in /proc/meminfo".into()),
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => (cuda_free(dev), format!("free memory of {}", self.name())),
            _ => (None, self.name()),
        }
    }
}

/// Free bytes on `dev`'s GPU (its context made current on this thread first).
#[cfg(feature = "cuda")]
fn cuda_free(dev: &candle_core::CudaDevice) -> Option<u64> {
    use candle_core::cuda_backend::cudarc::driver::result::mem_get_info;
    dev.cuda_stream().context().bind_to_thread().ok()?;
    mem_get_info().ok().map(|(free, _total)| free as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_settings_read_and_refused() {
        assert_eq!(DeviceSetting::parse("auto"), Ok(DeviceSetting::Auto));
        assert_eq!(DeviceSetting::parse(" CPU "), Ok(DeviceSetting::Cpu));
        assert_eq!(DeviceSetting::parse("cuda"), Ok(DeviceSetting::Cuda(0)));
        assert_eq!(DeviceSetting::parse("cuda:3"), Ok(DeviceSetting::Cuda(3)));
        for bad in ["", "cuda:", "cuda:x", "cuda:-1", "tpu", "metal"] {
            let e = DeviceSetting::parse(bad).expect_err(bad);
            assert!(e.contains("model_config.device") && e.contains("cuda:N"), "{e}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn without_the_cuda_feature_auto_is_the_cpu_and_cuda_says_how_to_get_it() {
        let auto = Placement::from_setting(DeviceSetting::Auto).expect("auto");
        assert!(auto.device.is_cpu() && matches!(auto.compute, Compute::Kernels(_)));
        assert_eq!(auto.name(), "cpu");
        let e = Placement::from_setting(DeviceSetting::Cuda(1)).expect_err("no cuda here");
        assert!(e.contains("cuda:1") && e.contains("--features cuda"), "{e}");
        let (free, source) = auto.available_memory();
        assert!(source.contains("MemAvailable"), "{source}");
        assert!(free.is_some_and(|f| f > 0), "the CPU's free memory is readable on Linux");
    }

    #[test]
    fn a_kernel_path_this_cpu_lacks_is_refused_naming_what_is_missing() {
        for path in KernelPath::ALL {
            match Placement::cpu_kernels(path) {
                Ok(p) => assert_eq!(p.compute, Compute::Kernels(path)),
                Err(e) => {
                    assert!(!path.supported());
                    assert!(e.contains(path.name()) && e.contains("CLEM_KERNELS"), "{e}");
                }
            }
        }
    }
}
