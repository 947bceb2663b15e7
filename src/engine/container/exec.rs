//! Commands in a running container: one-shot exec, interactive exec, logs.

use std::time::Duration;

use bollard::query_parameters as q;
use futures::StreamExt;
use serde_json::json;

use super::registry::ContainerEngine;
use crate::docker;
use crate::engine::error::{EngineError, Result};
use crate::model::{ContainerStatus, ExecRequest, ExecResult};

/// An interactive exec: the command's output, its stdin, its id.
pub struct AttachedExec {
    pub output: std::pin::Pin<
        Box<
            dyn futures::Stream<
                    Item = std::result::Result<
                        bollard::container::LogOutput,
                        bollard::errors::Error,
                    >,
                > + Send,
        >,
    >,
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    pub exec_id: String,
}

impl ContainerEngine {
    /// Runs a command in a running container: exit code and output.
    pub async fn exec(&self, key: &str, req: ExecRequest) -> Result<ExecResult> {
        let c = self.find(key).await?;
        if !c.managed {
            return Err(EngineError::Forbidden(format!(
                "Container {} is not managed by libgo.",
                c.name
            )));
        }
        if req.command.first().is_none_or(String::is_empty) {
            return Err(EngineError::Invalid(
                "Invalid parameter: command must not be empty, nor its first item (the program)."
                    .into(),
            ));
        }
        if c.status != ContainerStatus::Running {
            return Err(EngineError::Conflict(format!(
                "Container {} is {}, not running.",
                c.name,
                c.status.as_str()
            )));
        }
        let d = self.docker()?;
        let cfg: bollard::models::ExecConfig = serde_json::from_value(json!({
            "AttachStdout": true, "AttachStderr": true, "Cmd": req.command, "Env": docker::env_list(&req.env)
        }))
        .map_err(|e| EngineError::internal("building the exec", e))?;
        let exec = d
            .create_exec(&c.engine_id, cfg)
            .await
            .map_err(|e| self.dmap("exec", e))?;
        let started = d
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| self.dmap("exec", e))?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        if let bollard::exec::StartExecResults::Attached { mut output, .. } = started {
            let timeout = Duration::from_secs(req.timeout.unwrap_or(60).clamp(1, 3600));
            let read = async {
                while let Some(item) = output.next().await {
                    match item {
                        Ok(bollard::container::LogOutput::StdOut { message }) => {
                            stdout.extend_from_slice(&message)
                        }
                        Ok(bollard::container::LogOutput::StdErr { message }) => {
                            stderr.extend_from_slice(&message)
                        }
                        Ok(_) => {}
                        Err(e) => return Err(self.dmap("exec output", e)),
                    }
                }
                Ok(())
            };
            tokio::time::timeout(timeout, read).await.map_err(|_| {
                EngineError::Conflict(format!(
                    "the command ran longer than {} s",
                    timeout.as_secs()
                ))
            })??;
        }
        let info = d
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| self.dmap("exec", e))?;
        Ok(ExecResult {
            exit_code: info.exit_code.unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }

    /// Starts an interactive command (stdin attached) in a running container:
    /// its output stream, its input, and the exec id (for the exit code).
    pub async fn exec_attach(
        &self,
        key: &str,
        command: Vec<String>,
        tty: bool,
    ) -> Result<AttachedExec> {
        let c = self.find(key).await?;
        if !c.managed {
            return Err(EngineError::Forbidden(format!(
                "Container {} is not managed by libgo.",
                c.name
            )));
        }
        if c.status != ContainerStatus::Running {
            return Err(EngineError::Conflict(format!(
                "Container {} is {}, not running.",
                c.name,
                c.status.as_str()
            )));
        }
        let d = self.docker()?;
        let cfg: bollard::models::ExecConfig = serde_json::from_value(json!({
            "AttachStdin": true, "AttachStdout": true, "AttachStderr": true, "Tty": tty, "Cmd": command
        }))
        .map_err(|e| EngineError::internal("building the exec", e))?;
        let exec = d
            .create_exec(&c.engine_id, cfg)
            .await
            .map_err(|e| self.dmap("exec", e))?;
        match d
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| self.dmap("exec", e))?
        {
            bollard::exec::StartExecResults::Attached { output, input } => Ok(AttachedExec {
                output,
                input,
                exec_id: exec.id,
            }),
            bollard::exec::StartExecResults::Detached => {
                Err(EngineError::failed("the engine detached the exec"))
            }
        }
    }

    /// The exit code of a finished exec.
    pub async fn exec_exit_code(&self, exec_id: &str) -> Option<i64> {
        self.docker()
            .ok()?
            .inspect_exec(exec_id)
            .await
            .ok()?
            .exit_code
    }

    /// Log lines of a container (`follow` keeps the stream open).
    pub async fn logs(
        &self,
        key: &str,
        tail: Option<String>,
        since: i32,
        timestamps: bool,
        follow: bool,
    ) -> Result<
        impl futures::Stream<Item = std::result::Result<super::stats::bytes_of::Bytes, std::io::Error>>,
    > {
        let c = self.find(key).await?;
        let d = self.docker()?;
        let opts = q::LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            since,
            until: 0,
            timestamps,
            tail: tail.unwrap_or_else(|| "all".into()),
        };
        let stream = d.logs(&c.engine_id, Some(opts));
        Ok(stream.map(|item| match item {
            Ok(out) => Ok(out.into_bytes()),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }))
    }
}
