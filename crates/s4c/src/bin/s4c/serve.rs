//! `s4c serve`: the OpenAI-compatible server (`s4c::server`) on a TCP address.

use clap::Args;
use s4c::server::{shutdown_signal, Server, ServerConfig};
use s4c::{EngineError, Mode, Result};

use crate::args::{ModelArgs, SpecArgs};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Address to listen on (loopback by default; `0.0.0.0` serves every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Decoding mode (default: s4c when heads for the model are found, plain otherwise); a
    /// request may ask for the other with `"mode"`.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Require `Authorization: Bearer <KEY>` (default: `$S4C_API_KEY` if set, else none).
    #[arg(long, env = "S4C_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests generated at the same time (each with its own engine; with `--threads 0` the
    /// physical cores are shared out among them).
    #[arg(long, default_value_t = 1)]
    pub max_concurrent: usize,
    /// Requests that may wait for an engine; past that the answer is 429 with `Retry-After`.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Requests an engine decodes together when several are waiting (one forward per step for
    /// all of them; 1 answers one at a time). A request alone is answered with S4C.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// The model's name in the API (default: its file name without `.gguf`).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Finished answers whose keys and values each engine keeps, so that a request that
    /// continues a conversation runs only its new tokens (0 keeps none). Each holds its KV
    /// cache: 23 KiB per token for the default model.
    #[arg(long, default_value_t = 4)]
    pub prompt_cache: usize,
}

/// Runs `s4c serve` until SIGINT or SIGTERM.
pub fn run(args: &ServeArgs) -> Result<()> {
    if args.max_concurrent == 0 {
        return Err(EngineError::InvalidOption(
            "--max-concurrent must be at least 1".into(),
        ));
    }
    let mut model = args.model.clone();
    if model.threads == 0 && args.max_concurrent > 1 {
        let cores = s4c_models::quant::Threads::physical_cores();
        model.threads = (cores / args.max_concurrent).max(1);
    }
    let mut engine = model.engine(&args.spec);
    if let Some(mode) = args.mode {
        engine = engine.mode(mode);
    }
    let mut config = ServerConfig::new(engine.prompt_cache(args.prompt_cache));
    config.backend = args.model.backend;
    config.api_key = args.api_key.clone().filter(|k| !k.is_empty());
    config.workers = args.max_concurrent;
    config.queue = args.queue;
    config.max_batch = args.max_batch.max(1);
    if let Some(name) = &args.model_name {
        config.model_id = name.clone();
    }
    let runtime = crate::args::runtime()?;
    runtime.block_on(async {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| EngineError::Io {
                path: addr.clone().into(),
                source,
            })?;
        eprintln!("loading {} …", args.model.model.display());
        let id = config.model_id.clone();
        let server = Server::start(config).await?;
        let info = server.info();
        eprintln!(
            "serving `{id}` on http://{addr}/v1 (OpenAI API; GET /health, /metrics): {} mode, \
             {} on {}, heads {}",
            if info.mode == Mode::S4c {
                "s4c"
            } else {
                "plain"
            },
            info.weight_types,
            info.backend,
            info.heads
                .as_ref()
                .map_or("none".into(), |h| h.display().to_string())
        );
        server
            .serve(listener, async move {
                shutdown_signal().await;
                eprintln!("shutting down: finishing requests in flight");
            })
            .await
    })
}
