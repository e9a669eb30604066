//! socratune: fine-tune a small chat model (Gemma-2, Gemma-3) to speak as a persona, end to end, on candle.
//!
//! The modules follow the flow of data: `corpus` (dialogue files) → `synth` (AI×AI generation,
//! judging, review) → `dataset` (variants, chat template, split, statistics) → `model`
//! (Gemma-2/Gemma-3 + LoRA) → `train` (runs, checkpoints) → `report` (comparison) → `chat` (use).

pub mod chat;
pub mod corpus;
pub mod dataset;
pub mod demo;
pub mod eval;
pub mod fpenv;
pub mod fsutil;
pub mod gguf;
pub(crate) mod lock;
pub mod model;
pub mod report;
pub mod rundir;
pub mod synth;
pub mod threads;
pub mod train;
