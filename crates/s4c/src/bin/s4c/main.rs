//! The `s4c` command-line program: each subcommand is a thin layer over the `s4c` library, in a
//! module of its own.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use s4c::Result;

mod args;
mod bench;
mod bench_serve;
mod generate;
mod model_tools;
mod serve;
mod synth_prompts;
mod train_heads;

use args::{ModelArgs, DEFAULT_MODEL};

#[derive(Parser)]
#[command(
    name = "s4c",
    version,
    about = "Fast, lossless speculative decoding for Llama-family models (S4C)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt (streams it, or prints JSON with --json).
    Generate(generate::GenerateArgs),
    /// Print the token ids of a text (no special tokens added).
    Tokenize {
        #[command(flatten)]
        model: ModelArgs,
        /// Print `{"ids": [...]}`.
        #[arg(long)]
        json: bool,
        /// The text.
        text: String,
    },
    /// Write a Hugging Face folder (config.json, model.safetensors, tokenizer.json) from a GGUF file.
    Convert {
        /// The GGUF file.
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: PathBuf,
        /// The output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Spec-Bench protocol: every question in plain and S4C mode in one process; JSON, Markdown
    /// and an SVG chart.
    Bench(bench::BenchArgs),
    /// Train S4C draft heads for a model by self-distillation (data generation, then training).
    TrainHeads(train_heads::TrainHeadsArgs),
    /// Write training prompts with the model itself: it continues its chat template opened at a
    /// user turn (Magpie-style prompt synthesis); JSON lines for `train-heads --prompts`.
    SynthPrompts(synth_prompts::SynthPromptsArgs),
    /// Serve the model over HTTP with the OpenAI API (chat and text completions, streaming),
    /// answering with S4C.
    Serve(serve::ServeArgs),
    /// Load the OpenAI server from 1, 4, 16, 64 concurrent clients (loopback only, a bounded
    /// number of requests): latency, time to first token, aggregate tok/s, errors; JSON,
    /// Markdown and an SVG chart.
    BenchServe(bench_serve::BenchServeArgs),
    /// Show a model's configuration, storage types and parameter count.
    Info {
        /// A GGUF file or a Hugging Face folder.
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(&args),
        Command::Tokenize { model, json, text } => model_tools::tokenize(&model.model, json, &text),
        Command::Convert { model, out } => model_tools::convert(&model, &out),
        Command::Info { model } => model_tools::info(&model),
        Command::Bench(args) => bench::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::BenchServe(args) => bench_serve::run(&args),
        Command::TrainHeads(args) => train_heads::run(&args),
        Command::SynthPrompts(args) => synth_prompts::run(&args),
    }
}
