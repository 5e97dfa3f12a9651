//! The model providers of the agent (issue 12's foundation): Anthropic Messages and any
//! OpenAI-compatible chat completions endpoint, behind one neutral model and one call policy.
//!
//! # Brief overview
//! - [`config`]: `[llm]` and `[llm.fallback]` ([`LlmConfig`], [`Endpoint`]), resolved here like
//!   every module's section.
//! - [`model`]: [`Request`] (system, messages, tools, max_tokens) and [`Response`] (text, tool
//!   calls, stop, usage, model, provider), whichever provider answers.
//! - [`anthropic`] and [`openai`]: the two wire formats (pure: bodies built and read).
//! - [`LlmClient::complete`]: the policy (token budget, `request_timeout`, retries with backoff
//!   and `Retry-After`, the fallback, `run_timeout`, cancel), answering a [`Completion`] (who
//!   answered, the attempts, the latency) or a [`Failure`] (the error and the attempts).
//! - [`budget`]: the conversation trimmed to the token budget (pure, table-tested).
//!
//! # Why our own client
//! The maintained multi-provider crates (genai, rig) pull reqwest 0.13 with aws-lc-rs (a second
//! TLS provider and a C build) and leave retries, `Retry-After` and fallback to the caller,
//! which is what this crate is for; the wire formats are small. The transport is the
//! hyper-util client the daemon already uses.
//!
//! # Example
//! ```no_run
//! use productbuilder_llm::{Endpoint, LlmClient, LlmConfig, Message, Provider, Request};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = LlmConfig::new(Endpoint::new(Provider::Openaicompat, "qwen", "http://127.0.0.1:11434/v1"));
//! let client = LlmClient::new(config)?;
//! let request = Request {
//!     system: "You file issues.".into(),
//!     messages: vec![Message::user("the cart total is wrong")],
//!     ..Request::default()
//! };
//! let done = client.complete(&request, &tokio_util::sync::CancellationToken::new()).await?;
//! println!("{} said: {}", done.response.provider, done.response.content);
//! # Ok(()) }
//! ```

pub mod anthropic;
pub mod budget;
pub mod client;
pub mod config;
pub mod error;
pub mod model;
pub mod openai;
pub mod retry;
mod transport;

pub use budget::Trimmed;
pub use client::{Attempt, Completion, Failure, LlmClient, MAX_BODY_BYTES, Which};
pub use config::{Endpoint, LlmConfig, Provider};
pub use error::LlmError;
pub use model::{Block, Message, Request, Response, Role, Stop, Tool, ToolCall, ToolResult, Usage};
pub use retry::Backoff;
