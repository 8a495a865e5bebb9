//! Choosing the compute backend at run time: [`BackendKind`] names one, [`with_backend`] runs
//! backend-generic code on it.

use burn::tensor::backend::Backend;
use serde::Serialize;

use crate::error::{EngineError, Result};

/// A compute backend compiled into this build (cargo features `flex`, `wgpu`, `cuda`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The CPU (Burn's `flex`; the forward runs on s4c's CPU kernels).
    #[default]
    Flex,
    /// Any GPU through wgpu (Vulkan, Metal, DX12).
    Wgpu,
    /// NVIDIA GPUs through CUDA.
    Cuda,
}

impl BackendKind {
    /// Its name as a cargo feature and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Flex => "flex",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }
}

/// Backend-generic work, run by [`with_backend`] on the backend chosen at run time.
pub trait BackendJob {
    /// What the work returns.
    type Output;
    /// Runs the work on `device` of backend `B`.
    fn run<B: Backend>(self, device: &B::Device) -> Result<Self::Output>;
}

/// Runs `job` on the default device of `kind`, or says how to rebuild when `kind` is not
/// compiled in.
pub fn with_backend<J: BackendJob>(kind: BackendKind, job: J) -> Result<J::Output> {
    match kind {
        BackendKind::Flex => {
            #[cfg(feature = "flex")]
            return job.run::<burn::backend::Flex>(&burn::backend::flex::FlexDevice);
        }
        BackendKind::Wgpu => {
            #[cfg(feature = "wgpu")]
            return job.run::<burn::backend::Wgpu>(&Default::default());
        }
        BackendKind::Cuda => {
            #[cfg(feature = "cuda")]
            return job.run::<burn::backend::Cuda>(&Default::default());
        }
    }
    #[allow(unreachable_code)]
    {
        drop(job);
        Err(EngineError::InvalidOption(format!(
            "backend {} is not compiled into this build; rebuild with `--features {}`",
            kind.name(),
            kind.name()
        )))
    }
}
