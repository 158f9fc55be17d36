//! Choosing the compute device from the environment: `SEMBASE_DEVICE` is `cpu`,
//! `cuda` or `cuda:N`. A build with the `cuda` feature defaults to `cuda:0`, any
//! other build to the CPU.

pub use candle_core::Device;

use crate::error::{Error, Result};

/// The environment variable that names the device.
pub const DEVICE_VAR: &str = "SEMBASE_DEVICE";

/// The device `SEMBASE_DEVICE` names (or the build's default when it is unset).
pub fn from_env() -> Result<Device> {
    let spec = std::env::var(DEVICE_VAR).unwrap_or_else(|_| default_spec().to_string());
    parse(&spec)
}

fn default_spec() -> &'static str {
    if cfg!(feature = "cuda") {
        "cuda:0"
    } else {
        "cpu"
    }
}

/// Opens the device `spec` names: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
pub fn parse(spec: &str) -> Result<Device> {
    let bad = |why: String| Error::Device(format!("{DEVICE_VAR}={spec}: {why}"));
    let ordinal = match spec.trim() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:") {
            Some(n) => {
                n.parse::<usize>().map_err(|_| bad("expected cpu, cuda or cuda:N".into()))?
            }
            None => return Err(bad("expected cpu, cuda or cuda:N".into())),
        },
    };
    if !cfg!(feature = "cuda") {
        return Err(bad(
            "this build has no CUDA support; build with `cargo build --release --features cuda`"
                .into(),
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| bad(format!("cannot open GPU {ordinal}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_malformed_names() {
        assert!(parse("cpu").unwrap().is_cpu());
        for bad in ["gpu", "cuda:x", "cuda:-1", ""] {
            let message = parse(bad).unwrap_err().to_string();
            assert!(message.contains("SEMBASE_DEVICE"), "{bad}: {message}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_build_says_how_to_get_cuda() {
        let message = parse("cuda:0").unwrap_err().to_string();
        assert!(message.contains("--features cuda"), "{message}");
    }
}
