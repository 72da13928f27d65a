//! The one model type the generation loop sees, whatever the architecture: [`CausalLm`] dispatches on
//! `config.json`'s architecture when the model is built and forwards each step to the decoder that runs it. Also a
//! tokenizer-free loader ([`CausalLm::load_dir`]) for tools and tests that work on token ids.

use std::path::{Path, PathBuf};

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{Arch, ConfigError, ModelConfig};
use super::device::Placement;
use super::files::{self, FilesError};
use super::gemma2::Gemma;
use super::layers::{KvCache, SlotStep, StepMask};
use super::llama::Llama;
use super::{gemma2, gemma3, phi3, qwen3, weights};

/// A loaded causal language model.
pub enum CausalLm {
    /// Llama, Mistral, Qwen2, Qwen3, Phi-3.
    Llama(Llama),
    /// Gemma 2, Gemma 3.
    Gemma(Gemma),
}

/// A model folder that could not be loaded by [`CausalLm::load_dir`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error("{}: {source}", dir.display())]
    Weights { dir: PathBuf, source: candle_core::Error },
    /// `CLEM_KERNELS` names a kernel path this CPU cannot run (or none).
    #[error("{0}")]
    Placement(String),
}

impl CausalLm {
    /// Builds the architecture `config` names from the weights in `vb`.
    pub fn load(vb: VarBuilder, config: &ModelConfig) -> Result<CausalLm> {
        Ok(match config.arch {
            Arch::Llama | Arch::Mistral | Arch::Qwen2 => CausalLm::Llama(Llama::load(vb, config)?),
            Arch::Qwen3 => CausalLm::Llama(qwen3::load(vb, config)?),
            Arch::Phi3 => CausalLm::Llama(phi3::load(vb, config)?),
            Arch::Gemma2 => CausalLm::Gemma(gemma2::load(vb, config)?),
            Arch::Gemma3 => CausalLm::Gemma(gemma3::load(vb, config)?),
        })
    }

    /// Loads `config.json` and the safetensors weights of a folder on the CPU, with the kernels' default path (no
    /// tokenizer needed).
    pub fn load_dir(dir: &Path) -> std::result::Result<CausalLm, LoadError> {
        CausalLm::load_dir_on(dir, &Placement::cpu().map_err(LoadError::Placement)?)
    }

    /// [`CausalLm::load_dir`] on `placement`'s device, computing as it says.
    pub fn load_dir_on(dir: &Path, placement: &Placement) -> std::result::Result<CausalLm, LoadError> {
        let mut config = ModelConfig::load(dir)?;
        config.compute = placement.compute;
        let weights = files::weight_files(dir)?;
        let err = |source| LoadError::Weights { dir: dir.to_path_buf(), source };
        let vb = weights::var_builder(&weights, &placement.device).map_err(err)?;
        CausalLm::load(vb, &config).map_err(err)
    }

    pub fn config(&self) -> &ModelConfig {
        match self {
            CausalLm::Llama(m) => &m.config,
            CausalLm::Gemma(m) => &m.config,
        }
    }

    /// One forward step. `ids` `(batch, seq)` u32, `positions` `(batch * seq)` u32 (row-major), `mask` which
    /// slots each row may see. Returns the logits of each row's last position `(batch, vocab)`, f32.
    pub fn forward(&self, ids: &Tensor, positions: &Tensor, mask: &StepMask, cache: &mut KvCache) -> Result<Tensor> {
        match self {
            CausalLm::Llama(m) => m.forward(ids, positions, mask, cache),
            CausalLm::Gemma(m) => m.forward(ids, positions, mask, cache),
        }
    }

    /// One ragged step over sequences that each have a cache of their own (no padding): the logits of each
    /// sequence's last token `(sequences, vocab)`, f32.
    pub fn forward_slots(&self, steps: &mut [SlotStep<'_>]) -> Result<Tensor> {
        match self {
            CausalLm::Llama(m) => m.forward_slots(steps),
            CausalLm::Gemma(m) => m.forward_slots(steps),
        }
    }
}
